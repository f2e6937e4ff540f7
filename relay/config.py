"""Relay configuration: one TOML file, then environment overrides, validated once.

Every key is documented in README ("Relay configuration") and described, with
its type and default, by `quota.contract.files.RelayFile`; this module adds the
rules that join keys or read files. All errors are reported at once, each
naming its key. Relative paths are taken from the config file's folder. An
environment variable QUOTARELAY_RELAY_<SECTION>_<KEY> (upper case) overrides
that key; no other variable is read (the command line's client settings, such
as QUOTARELAY_BILLING_URL, are never the relay's), and the names used are kept
in `env_keys` for the start log.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import msgspec

from quota.contract.config import Address, Environment, Problems, decode_file, decode_value
from quota.contract.files import BillingLinkSection, LimitsSection, RelayFile
from quota.core.admission import MaxStartups, parse_max_startups
from quota.core.errors import InvalidValue
from quota.core.shares import ShareLimits
from quota.metrics import MetricsConfig, metrics_config
from relay.errors import ConfigError
from relay.hub.gate import GateConfig

ENV_PROGRAM = "relay"  # QUOTARELAY_RELAY_<SECTION>_<KEY>
WRITE_BUFFER_MIN, WRITE_BUFFER_MAX = 16 * 1024, 1024**3  # relay.write_buffer's range


@dataclass(frozen=True, slots=True, kw_only=True)
class BillingLinkConfig:
    """How the relay syncs with the billing API; absent when `billing.url` is empty."""

    url: str
    urls: tuple[str, ...]  # every replica: `url` first, then `billing.urls`
    token: str
    journal: Path
    interval_ms: int
    timeout_ms: int
    min_want: int
    max_want: int
    offline: str
    offline_allowance: int
    idle_return_ms: int
    registry_refresh_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayConfig:
    relay_id: str
    ssh_listen: HostPort
    host_key: Path
    agents_file: Path
    public_bind: str
    public_ports: range
    keepalive_ms: int
    ciphers: tuple[str, ...]
    admin_listen: HostPort | Path  # a Path is a unix socket
    admin_token: str
    metering: bool
    low_water: int
    slice_bytes: int
    inactive_grace_ms: int
    stream_log_path: Path
    interim_ms: int
    flush_ms: int
    json_lines: Path | None  # None: off; Path("-"): stderr
    source: Path | None = field(default=None)
    billing: BillingLinkConfig | None = None
    udp_idle_timeout_ms: int = 60_000  # a UDP flow idle this long ends
    udp_max_datagram: int = 65_507  # bigger datagrams are dropped and counted
    write_buffer: int = 256 * 1024  # high-water mark of every socket the relay writes to
    udp_unanswered_interval_ms: int = 60_000  # one record of unanswered flows a tunnel per this
    shares: ShareLimits = field(default_factory=ShareLimits)  # fair shares; agents may override
    gate: GateConfig = field(default_factory=GateConfig)  # [limits]: admission before login
    metrics: MetricsConfig = field(default_factory=MetricsConfig)  # port None: no listener
    secret_files: tuple[tuple[str, Path], ...] = ()  # (key, file) of each file holding a token
    env_keys: tuple[str, ...] = ()  # the environment variables that set keys (names only)
    env_ignored: tuple[str, ...] = ()  # variables with the prefix that name no key
    workers: int = 1  # worker processes (relay.workers: one per core unless set); 1: one process


# `relay.workers = 0` runs one worker per core, at most this many: each
# worker is a process of its own (about 70 MB resident here), and beyond a few the
# supervisor's quota host, not the cores, sets the pace.
MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """One worker per core this process may run on, at most MAX_DEFAULT_WORKERS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_WORKERS))


def parse_host_port(text: str, key: str) -> HostPort:
    problems = Problems()
    address = decode_value(Address, text, key, problems)
    problems.raise_as(ConfigError)
    return HostPort(host=address.host, port=address.port)


def _read_toml(path: Path | None, overrides: dict[str, Any] | None) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        raw.setdefault(section, {})[key] = value
    return raw


def load_config(
    path: Path | None,
    overrides: dict[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> RelayConfig:
    """Read `path` (or only defaults when None), apply `env` (default: the process's)
    and `overrides`, validate.

    Every problem is reported at once ("relay.public_ports: ...; billing.url: ...").
    """
    problems = Problems()
    raw = _read_toml(path, overrides)
    environment = Environment(ENV_PROGRAM, os.environ if env is None else env)
    f = decode_file(RelayFile, raw, problems, environment)
    base = path.resolve().parent if path is not None else Path.cwd()

    def rel(text: str) -> Path:
        p = Path(text).expanduser()
        return p if p.is_absolute() else base / p

    r, q, s, u = f.relay, f.quota, f.stream_log, f.udp
    admin_token = _token(f.admin.token, f.admin.token_file, "admin", rel, problems)
    admin_listen = _admin_listen(f.admin.listen, rel, problems)
    ciphers = _ciphers(r.ciphers, problems)
    billing = _billing(f.billing, rel, problems)
    if not WRITE_BUFFER_MIN <= r.write_buffer <= WRITE_BUFFER_MAX:
        problems.add("relay.write_buffer", f"16Ki..1Gi bytes, got {r.write_buffer}")
    m = f.metrics
    metrics = metrics_config(m.listen, problems, max_agents=m.max_agents, per_tunnel=m.per_tunnel)
    gate = _gate(f.limits, problems)
    if not 1 <= u.max_datagram <= 65_535:
        problems.add("udp.max_datagram", f"1..65535 bytes (a frame's limit), got {u.max_datagram}")
    problems.raise_as(ConfigError)
    return RelayConfig(
        relay_id=r.id,
        ssh_listen=HostPort(host=r.ssh_listen.host, port=r.ssh_listen.port),
        host_key=rel(r.host_key),
        agents_file=rel(r.agents_file),
        public_bind=r.public_bind,
        public_ports=r.public_ports.range,
        keepalive_ms=r.keepalive,
        ciphers=ciphers,
        admin_listen=admin_listen,
        admin_token=admin_token,
        metering=q.metering,
        low_water=q.low_water,
        slice_bytes=max(1, q.slice),
        inactive_grace_ms=q.inactive_grace,
        stream_log_path=rel(s.path),
        interim_ms=max(1, s.interim),
        flush_ms=max(1, s.flush),
        json_lines=_json_lines(s.json_lines, rel),
        source=path,
        billing=billing,
        udp_idle_timeout_ms=max(1, u.idle_timeout),
        udp_max_datagram=u.max_datagram,
        write_buffer=r.write_buffer,
        udp_unanswered_interval_ms=max(1, u.unanswered_interval),
        shares=ShareLimits(**msgspec.structs.asdict(f.shares)),
        metrics=metrics,
        gate=gate,
        secret_files=_secret_files(raw, f, path, rel),
        env_keys=tuple(sorted(environment.used)),
        env_ignored=environment.ignored(),
        workers=r.workers or default_workers(),
    )


def _gate(limits: LimitsSection, problems: Problems) -> GateConfig:
    """Admission before login; the reserve is checked against the descriptor limit at start."""
    try:
        startups = parse_max_startups(limits.max_startups)
    except InvalidValue as exc:
        problems.note(f"limits.{exc}")
        startups = MaxStartups()
    if limits.tunnel_reserve > limits.descriptor_reserve:
        problems.add(
            "limits.tunnel_reserve",
            f"at most limits.descriptor_reserve ({limits.descriptor_reserve}),"
            f" got {limits.tunnel_reserve}",
        )
    return GateConfig(
        max_startups=startups,
        per_source_startups=limits.per_source_startups,
        login_grace_ms=limits.login_grace,
        max_auth_tries=limits.max_auth_tries,
        descriptor_reserve=limits.descriptor_reserve,
        tunnel_reserve=limits.tunnel_reserve,
    )


def _json_lines(text: str, rel: Callable[[str], Path]) -> Path | None:
    return None if not text else Path("-") if text == "-" else rel(text)


def _token(
    token: str, token_file: str, section: str, rel: Callable[[str], Path], problems: Problems
) -> str:
    """The token itself, or the first line of its file when only the file is given."""
    if token or not token_file:
        return token
    try:
        return rel(token_file).read_text().strip()
    except OSError as exc:
        problems.add(f"{section}.token_file", f"cannot read: {exc}")
        return ""


def _admin_listen(text: str, rel: Callable[[str], Path], problems: Problems) -> HostPort | Path:
    if text.startswith("unix:"):
        return rel(text[5:])
    address = decode_value(Address, text, "admin.listen", problems)
    if address is msgspec.UNSET:
        return HostPort(host="", port=0)
    return HostPort(host=address.host, port=address.port)


def _billing(
    b: BillingLinkSection, rel: Callable[[str], Path], problems: Problems
) -> BillingLinkConfig | None:
    urls = tuple(dict.fromkeys(u for u in (b.url, *b.urls) if u))
    if not urls:
        return None
    token = _token(b.token, b.token_file, "billing", rel, problems)
    if not token:
        problems.add("billing.token", "the relay token is required when billing.url is set")
    return BillingLinkConfig(
        url=urls[0],
        urls=urls,
        token=token,
        journal=rel(b.journal),
        interval_ms=max(10, b.interval),
        timeout_ms=max(10, b.timeout),
        min_want=b.min_want,
        max_want=max(b.min_want, b.max_want),
        offline=b.offline,
        offline_allowance=b.offline_allowance,
        idle_return_ms=b.idle_return,
        registry_refresh_ms=max(100, b.registry_refresh),
    )


def _ciphers(text: str, problems: Problems) -> tuple[str, ...]:
    names = tuple(c.strip() for c in text.split(",") if c.strip())
    if not names:
        problems.add("relay.ciphers", "name at least one cipher, e.g. aes128-gcm@openssh.com")
    known = {alg.decode() for alg in asyncssh.encryption.get_encryption_algs()}
    unknown = [n for n in names if n not in known]
    if unknown:
        offered = ", ".join(sorted(known))
        problems.add("relay.ciphers", f"unknown cipher {unknown[0]!r} (known: {offered})")
    return names


def _secret_files(
    raw: dict[str, Any], f: RelayFile, path: Path | None, rel: Callable[[str], Path]
) -> tuple[tuple[str, Path], ...]:
    """The files that hold this relay's tokens, each with the key that put a token there."""
    found: list[tuple[str, Path]] = []
    sections = [("admin", f.admin.token, f.admin.token_file)]
    if f.billing.url:
        sections.append(("billing", f.billing.token, f.billing.token_file))
    for section, token, token_file in sections:
        table = raw.get(section)
        if path is not None and isinstance(table, dict) and table.get("token"):
            found.append((f"{section}.token", path))  # written in the config file itself
        elif not token and token_file:
            found.append((f"{section}.token_file", rel(token_file)))
    return tuple(found)
