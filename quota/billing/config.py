"""The billing service's config: TOML, then environment, validated once.

Invariants: a `BillingConfig` is only ever built whole and valid; every error is
a `ConfigError` whose message starts with the offending key ("server.port: ...").
Money in the file is coin written as a string ("0.1") or whole coins (19); it
becomes integer millicoins here, and no float is accepted.
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
from quota.billing.store.base import POSTGRESQL_SCHEMES, is_postgresql
from quota.core.billing import Catalogue, catalogue_from_config
from quota.core.errors import InvalidValue
from quota.core.money import parse_coin
from quota.core.units import parse_duration_ms

ADMIN_TOKEN_ENV = "QUOTARELAY_BILLING_ADMIN_TOKEN"
MIN_TOKEN = 16

_SECTIONS = {
    "server": {"host", "port", "database", "admin_token", "maintenance_interval", "lease_ttl"},
    "pricing": {"metered_price_per_gb"},
    "notifications": {"webhook_url", "low_balance_interval", "retries", "timeout"},
}


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayCred:
    id: str
    token: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BillingConfig:
    host: str = "127.0.0.1"
    port: int = 8480
    database: Path | str = Path("var/billing.sqlite3")  # a SQLite file, or a PostgreSQL URL
    admin_token: str
    maintenance_interval_ms: int = 300_000
    lease_ttl_ms: int = 600_000  # how long a relay's traffic lease outlives its last sync
    metered_price_per_gb: int = 100
    webhook_url: str | None = None
    low_balance_interval_ms: int = 7 * 86_400_000
    notify_retries: int = 5
    notify_timeout_ms: int = 5_000
    relays: tuple[RelayCred, ...] = ()
    catalogue: Catalogue = field(default_factory=lambda: Catalogue(plans={}, packages={}))


def _get(table: Mapping[str, Any], section: str, key: str, kind: type, default: Any) -> Any:
    value = table.get(key, default)
    if value is not default and (isinstance(value, bool) or not isinstance(value, kind)):
        raise ConfigError(f"{section}.{key}: expected {kind.__name__}, got {value!r}")
    return value


def _parsed(section: str, key: str, func: Any, value: Any) -> Any:
    try:
        return func(value)
    except InvalidValue as exc:
        raise ConfigError(f"{section}.{key}: {exc}") from None


def _section(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    table = raw.get(name, {})
    if not isinstance(table, Mapping):
        raise ConfigError(f"{name}: must be a table ([{name}])")
    unknown = set(table) - _SECTIONS[name]
    if unknown:
        raise ConfigError(f"{name}.{sorted(unknown)[0]}: unknown key")
    return table


def _relays(raw: Any) -> tuple[RelayCred, ...]:
    if not isinstance(raw, list):
        raise ConfigError("relays: must be an array of tables ([[relays]])")
    relays = []
    for i, table in enumerate(raw):
        where = f"relays[{i}]"
        if not isinstance(table, Mapping) or set(table) != {"id", "token"}:
            raise ConfigError(f"{where}: needs exactly the keys id and token")
        ident, token = table["id"], table["token"]
        if not isinstance(ident, str) or not ident:
            raise ConfigError(f"{where}.id: must be a non-empty string")
        if not isinstance(token, str) or len(token) < MIN_TOKEN:
            raise ConfigError(f"{where}.token: must be a string of {MIN_TOKEN}+ characters")
        relays.append(RelayCred(id=ident, token=token))
    return tuple(relays)


def _database(value: str) -> Path | str:
    """A SQLite file's path, or a PostgreSQL URL (kept as written: a path would fold its //)."""
    if not value:
        raise ConfigError("server.database: set a SQLite file path or a postgresql:// URL")
    if "://" not in value:
        return Path(value)
    if not is_postgresql(value):
        schemes = " or ".join(POSTGRESQL_SCHEMES)
        raise ConfigError(f"server.database: a URL must start with {schemes}")
    if not urllib.parse.urlsplit(value).path.strip("/"):
        raise ConfigError("server.database: the PostgreSQL URL names no database (.../dbname)")
    return value


def config_from_mapping(raw: Mapping[str, Any], env: Mapping[str, str]) -> BillingConfig:
    """Validate a decoded TOML document (and the environment) into a config."""
    unknown = set(raw) - set(_SECTIONS) - {"relays", "plans", "packages"}
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown section")
    server, pricing, notes = (_section(raw, n) for n in ("server", "pricing", "notifications"))
    admin = env.get(ADMIN_TOKEN_ENV) or _get(server, "server", "admin_token", str, None)
    if not isinstance(admin, str) or len(admin) < MIN_TOKEN:
        raise ConfigError(
            f"server.admin_token: set it (or {ADMIN_TOKEN_ENV}) to {MIN_TOKEN}+ characters"
        )
    port = _get(server, "server", "port", int, 8480)
    if not 0 <= port <= 65535:
        raise ConfigError(f"server.port: {port} is not a TCP port")
    webhook = _get(notes, "notifications", "webhook_url", str, None) or None
    if webhook is not None and not webhook.startswith(("http://", "https://")):
        raise ConfigError("notifications.webhook_url: must be an http:// or https:// URL")
    retries = _get(notes, "notifications", "retries", int, 5)
    if not 0 <= retries <= 100:
        raise ConfigError("notifications.retries: must be 0..100")
    try:
        catalogue = catalogue_from_config(raw.get("plans", []), raw.get("packages", []))
    except InvalidValue as exc:
        raise ConfigError(str(exc)) from None
    interval = _parsed(
        "server",
        "maintenance_interval",
        parse_duration_ms,
        server.get("maintenance_interval", "5m"),
    )
    if interval <= 0:
        raise ConfigError("server.maintenance_interval: must be longer than zero")
    lease_ttl = _parsed("server", "lease_ttl", parse_duration_ms, server.get("lease_ttl", "10m"))
    if lease_ttl <= 0:
        raise ConfigError("server.lease_ttl: must be longer than zero")
    return BillingConfig(
        host=_get(server, "server", "host", str, "127.0.0.1"),
        port=port,
        database=_database(_get(server, "server", "database", str, "var/billing.sqlite3")),
        admin_token=admin,
        maintenance_interval_ms=interval,
        lease_ttl_ms=lease_ttl,
        metered_price_per_gb=_parsed(
            "pricing",
            "metered_price_per_gb",
            parse_coin,
            pricing.get("metered_price_per_gb", "0.1"),
        ),
        webhook_url=webhook,
        low_balance_interval_ms=_parsed(
            "notifications",
            "low_balance_interval",
            parse_duration_ms,
            notes.get("low_balance_interval", "7d"),
        ),
        notify_retries=retries,
        notify_timeout_ms=_parsed(
            "notifications", "timeout", parse_duration_ms, notes.get("timeout", "5s")
        ),
        relays=_relays(raw.get("relays", [])),
        catalogue=catalogue,
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
