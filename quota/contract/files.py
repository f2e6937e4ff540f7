"""The three config files (relay, billing API, agent), described once, with their defaults.

Invariants:
- Each key, its type and its default appear here and nowhere else; the loaders
  (relay.config, quota.billing.config, tools.agent.config) only add rules that
  join keys or touch the file system, and build their own config values.
- Defaults are written the way README documents them ("1M", "30s").
- Every key documented in README ("Relay configuration", the billing and agent
  config sections) is a field here, under the same name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from quota.contract.config import (
    Address,
    Bytes,
    Coin,
    Millis,
    Ports,
    Section,
    coin,
    millis,
    size,
)

URL = Annotated[
    str, msgspec.Meta(pattern=r"^(https?://.*)?$", description="expected http:// or https://")
]
Token = Annotated[
    str,
    msgspec.Meta(
        min_length=16, description="must be a string of 16+ characters", extra={"secret": True}
    ),
]

# -- the relay (relay.toml) ------------------------------------------------------------


class RelaySection(Section, frozen=True, kw_only=True):
    id: Annotated[
        str, msgspec.Meta(pattern=r"^[\w-]+$", description="letters, digits, - and _ only")
    ] = "relay-1"
    ssh_listen: Address = Address("127.0.0.1:2222")
    host_key: str = "var/relay_host_key"
    agents_file: str = "agents.toml"
    public_bind: str = "127.0.0.1"
    public_ports: Ports = Ports("20000-20099")
    keepalive: Millis = millis("30s")
    ciphers: str = "aes128-gcm@openssh.com,aes256-gcm@openssh.com"
    write_buffer: Bytes = size("256Ki")
    # worker processes behind the SSH port; 0 (the default): one per core (at most 8)
    workers: Annotated[int, msgspec.Meta(ge=0, le=256, description="0..256")] = 0


class AdminSection(Section, frozen=True, kw_only=True):
    listen: str = "127.0.0.1:8022"  # HOST:PORT, or unix:PATH
    token: str = ""
    token_file: str = ""


class QuotaSection(Section, frozen=True, kw_only=True):
    metering: bool = True
    low_water: Bytes = size("1M")
    slice: Bytes = size("256K")
    inactive_grace: Millis = millis("5m")


class StreamLogSection(Section, frozen=True, kw_only=True):
    path: str = "var/streams.db"
    interim: Millis = millis("60s")
    flush: Millis = millis("1s")
    json_lines: str = "var/streams.jsonl"  # "" off, "-" stderr


class UdpSection(Section, frozen=True, kw_only=True):
    idle_timeout: Millis = millis("60s")
    max_datagram: Bytes = size("65507")
    unanswered_interval: Millis = millis("60s")  # one record of unanswered flows a tunnel


Share = Annotated[int, msgspec.Meta(ge=0, description="must be a whole number >= 0")]


class SharesSection(Section, frozen=True, kw_only=True):
    """Fair shares (quota.core.shares.ShareLimits); an agent's registry entry may override."""

    ssh_connections_per_agent: Share = 16
    channels_per_connection: Share = 64
    public_ports_per_agent: Share = 8
    endpoints_per_agent: Share = 64
    streams_per_tunnel: Share = 512
    connections_per_source: Share = 64
    udp_flows_per_source: Share = 64


Count = Annotated[int, msgspec.Meta(ge=1, le=1_000_000, description="must be 1..1000000")]


class LimitsSection(Section, frozen=True, kw_only=True):
    """Admission before login, as sshd's (quota.core.admission), and the descriptor reserve."""

    max_startups: str = "10:30:100"  # start:rate:full, checked by quota.core.admission
    per_source_startups: Count = 10
    login_grace: Millis = millis("30s")  # 0: no limit
    max_auth_tries: Count = 6
    descriptor_reserve: Count = 128
    tunnel_reserve: Annotated[
        int, msgspec.Meta(ge=0, le=1_000_000, description="must be 0..1000000")
    ] = 64


class BillingLinkSection(Section, frozen=True, kw_only=True):
    url: URL = ""
    urls: list[URL] = []  # more replicas of the same billing API, tried after `url`
    token: str = ""
    token_file: str = ""
    journal: str = "var/journal.db"
    interval: Millis = millis("1s")
    timeout: Millis = millis("5s")
    min_want: Bytes = size("64M")
    max_want: Bytes = size("1G")
    offline: Literal["pause", "continue"] = "pause"
    offline_allowance: Bytes = size("0")
    idle_return: Millis = millis("5m")
    registry_refresh: Millis = millis("30s")


class RelayMetricsSection(Section, frozen=True, kw_only=True):
    listen: str = ""  # HOST:PORT of /metrics; "" is off
    max_agents: Annotated[int, msgspec.Meta(ge=1, le=100_000, description="must be 1..100000")] = (
        100  # agents with a label of their own; the rest are summed under "other"
    )
    per_tunnel: bool = False  # bytes per tunnel too


class RelayFile(Section, frozen=True, kw_only=True):
    relay: RelaySection = RelaySection()
    admin: AdminSection = AdminSection()
    quota: QuotaSection = QuotaSection()
    stream_log: StreamLogSection = StreamLogSection()
    udp: UdpSection = UdpSection()
    shares: SharesSection = SharesSection()
    limits: LimitsSection = LimitsSection()
    billing: BillingLinkSection = BillingLinkSection()
    metrics: RelayMetricsSection = RelayMetricsSection()


# -- the billing API (billing.toml) ----------------------------------------------------


class ServerSection(Section, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535, description="not a TCP port")] = 8480
    database: str = "var/billing.sqlite3"  # a SQLite file, or a postgresql:// URL
    admin_token: str = ""  # or QUOTARELAY_BILLING_SERVER_ADMIN_TOKEN
    maintenance_interval: Millis = millis("5m")
    lease_ttl: Millis = millis("10m")
    # unknown tokens one address may send per window before it is answered 429
    auth_failures: Annotated[
        int, msgspec.Meta(ge=1, le=1_000_000, description="must be 1..1000000")
    ] = 20
    auth_window: Millis = millis("60s")


class PricingSection(Section, frozen=True, kw_only=True):
    metered_price_per_gb: Coin = coin("0.1")


class NotificationsSection(Section, frozen=True, kw_only=True):
    webhook_url: URL = ""
    # HMAC-SHA256 key of the Quotarelay-Signature header (env: ..._NOTIFICATIONS_WEBHOOK_SECRET)
    webhook_secret: str = ""
    low_balance_interval: Millis = millis("7d")
    retries: Annotated[int, msgspec.Meta(ge=0, le=100, description="must be 0..100")] = 20
    timeout: Millis = millis("5s")
    backoff_max: Millis = millis("1h")  # the longest wait between two attempts


class BillingMetricsSection(Section, frozen=True, kw_only=True):
    listen: str = ""  # HOST:PORT of /metrics; "" is off


class LedgerSection(Section, frozen=True, kw_only=True):
    # traffic drawn from bucket and packages: one ledger entry per agent per window; "0": per report
    traffic_rollup: Millis = millis("1h")


class RelayCred(Section, frozen=True, kw_only=True):
    """A relay allowed to sync, and the token it proves itself with."""

    id: Annotated[str, msgspec.Meta(min_length=1, description="must be a non-empty string")]
    token: Token


class BillingFile(Section, frozen=True, kw_only=True):
    server: ServerSection = ServerSection()
    pricing: PricingSection = PricingSection()
    notifications: NotificationsSection = NotificationsSection()
    metrics: BillingMetricsSection = BillingMetricsSection()
    ledger: LedgerSection = LedgerSection()
    relays: list[RelayCred] = []
    plans: list[dict[str, Any]] = []  # read by quota.core.billing.catalogue_from_config
    packages: list[dict[str, Any]] = []


# -- the agent (agent.toml, then flags) ------------------------------------------------


class AgentSection(Section, frozen=True, kw_only=True):
    relay: str = ""  # HOST:PORT of the relay's SSH front
    user: str = ""  # the agent id the relay knows
    key: str = ""  # private key file (OpenSSH format)
    known_hosts: str = "~/.ssh/known_hosts"  # "ignore" accepts any relay host key
    backoff_max: Millis = millis("30s")  # longest wait between reconnect attempts
    idle_timeout: Millis = millis("120s")  # a local UDP flow idle this long is forgotten


class AgentFile(Section, frozen=True, kw_only=True):
    agent: AgentSection = AgentSection()
