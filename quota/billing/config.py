"""The billing service's config: TOML, then environment, validated once.

Invariants: a `BillingConfig` is only ever built whole and valid; keys, types and
defaults are `quota.contract.files.BillingFile`; every problem is reported at
once in one `ConfigError`, each starting with its key ("server.port: ...; ...").
Money in the file is coin written as a string ("0.1") or whole coins (19); it
becomes integer millicoins here, and no float is accepted. An environment
variable QUOTARELAY_BILLING_<SECTION>_<KEY> overrides a key of a table
(`QUOTARELAY_BILLING_SERVER_ADMIN_TOKEN`); no other variable is read, so the
command line's client settings (QUOTARELAY_BILLING_URL, _TOKEN) never are. The
names used are kept in `env_keys` for the start log.
"""

from __future__ import annotations

import os
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quota.billing.errors import ConfigError
from quota.billing.store.base import LEDGER_RELAY_ID, POSTGRESQL_SCHEMES, is_postgresql
from quota.contract.config import Environment, Problems, decode_file
from quota.contract.files import BillingFile, RelayCred
from quota.core.billing import PriceList, catalogue_from_config
from quota.core.errors import InvalidValue
from quota.metrics import MetricsConfig, metrics_config

__all__ = [
    "ADMIN_TOKEN_ENV",
    "WEBHOOK_SECRET_ENV",
    "BillingConfig",
    "RelayCred",
    "config_from_mapping",
    "load_config",
]

ENV_PROGRAM = "billing"  # QUOTARELAY_BILLING_<SECTION>_<KEY>
ADMIN_TOKEN_ENV = Environment(ENV_PROGRAM, {}).name("server", "admin_token")
WEBHOOK_SECRET_ENV = Environment(ENV_PROGRAM, {}).name("notifications", "webhook_secret")
MIN_TOKEN = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class BillingConfig:
    host: str = "127.0.0.1"
    port: int = 8480
    database: Path | str = Path("var/billing.sqlite3")  # a SQLite file, or a PostgreSQL URL
    admin_token: str
    maintenance_interval_ms: int = 300_000
    lease_ttl_ms: int = 600_000  # how long a relay's traffic lease outlives its last sync
    auth_failures: int = 20  # unknown tokens per address and window before 429
    auth_window_ms: int = 60_000
    metered_price_per_gb: int = 100
    webhook_url: str | None = None
    webhook_secret: str = ""  # signs every delivery; required with webhook_url
    low_balance_interval_ms: int = 7 * 86_400_000
    notify_retries: int = 20
    notify_timeout_ms: int = 5_000
    notify_backoff_max_ms: int = 3_600_000
    traffic_rollup_ms: int = 3_600_000  # one traffic entry per agent per window; 0: per report
    relays: tuple[RelayCred, ...] = ()
    catalogue: PriceList = field(default_factory=lambda: PriceList(plans={}, packages={}))
    metrics: MetricsConfig = field(default_factory=MetricsConfig)  # port None: no listener
    env_keys: tuple[str, ...] = ()  # the environment variables that set keys (names only)
    env_ignored: tuple[str, ...] = ()  # variables with the prefix that name no key


def _database(value: str, problems: Problems) -> Path | str:
    """A SQLite file's path, or a PostgreSQL URL (kept as written: a path would fold its //)."""
    if not value:
        problems.add("server.database", "set a SQLite file path or a postgresql:// URL")
    elif "://" not in value:
        return Path(value)
    elif not is_postgresql(value):
        problems.add("server.database", f"a URL must start with {' or '.join(POSTGRESQL_SCHEMES)}")
    elif not urllib.parse.urlsplit(value).path.strip("/"):
        problems.add("server.database", "the PostgreSQL URL names no database (.../dbname)")
    return value


def config_from_mapping(raw: Mapping[str, Any], env: Mapping[str, str]) -> BillingConfig:
    """Validate a decoded TOML document (and the environment) into a config.

    Every problem is reported at once, each starting with its key.
    """
    problems = Problems()
    environment = Environment(ENV_PROGRAM, env)
    f = decode_file(BillingFile, raw, problems, environment)
    server, notes = f.server, f.notifications
    admin = server.admin_token
    if len(admin) < MIN_TOKEN:
        problems.add(
            "server.admin_token", f"set it (or {ADMIN_TOKEN_ENV}) to {MIN_TOKEN}+ characters"
        )
    secret = env.get(WEBHOOK_SECRET_ENV) or notes.webhook_secret
    if notes.webhook_url and len(secret) < MIN_TOKEN:
        problems.add(
            "notifications.webhook_secret",
            f"set it (or {WEBHOOK_SECRET_ENV}) to {MIN_TOKEN}+ characters: it signs each webhook",
        )
    for key, value in (
        ("notifications.timeout", notes.timeout),
        ("notifications.backoff_max", notes.backoff_max),
        ("server.maintenance_interval", server.maintenance_interval),
        ("server.lease_ttl", server.lease_ttl),
        ("server.auth_window", server.auth_window),
    ):
        if value <= 0:
            problems.add(key, "must be longer than zero")
    catalogue = PriceList(plans={}, packages={})
    try:
        catalogue = catalogue_from_config(f.plans, f.packages)
    except InvalidValue as exc:
        problems.note(str(exc))  # plans[1].price: ...
    for i, relay in enumerate(f.relays):
        if relay.id == LEDGER_RELAY_ID:  # marks usage carried over from the ledger (migration 6)
            problems.add(
                f"relays[{i}].id", f"{LEDGER_RELAY_ID!r} is reserved; name the relay otherwise"
            )
    rollup = f.ledger.traffic_rollup
    if rollup < 0 or (rollup and 86_400_000 % rollup):
        problems.add("ledger.traffic_rollup", "must divide a day (1h, 15m, 1d), or be 0 for off")
    database = _database(server.database, problems)
    metrics = metrics_config(f.metrics.listen, problems)
    problems.raise_as(ConfigError)
    return BillingConfig(
        host=server.host,
        port=server.port,
        database=database,
        admin_token=admin,
        maintenance_interval_ms=server.maintenance_interval,
        lease_ttl_ms=server.lease_ttl,
        auth_failures=server.auth_failures,
        auth_window_ms=server.auth_window,
        metered_price_per_gb=f.pricing.metered_price_per_gb,
        webhook_url=notes.webhook_url or None,
        webhook_secret=secret,
        low_balance_interval_ms=notes.low_balance_interval,
        notify_retries=notes.retries,
        notify_timeout_ms=notes.timeout,
        notify_backoff_max_ms=notes.backoff_max,
        traffic_rollup_ms=rollup,
        relays=tuple(f.relays),
        catalogue=catalogue,
        metrics=metrics,
        env_keys=tuple(sorted(environment.used)),
        env_ignored=environment.ignored(),
    )


def load_config(path: Path, env: Mapping[str, str] | None = None) -> BillingConfig:
    """Read and validate the TOML file at `path`."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return config_from_mapping(raw, os.environ if env is None else env)
