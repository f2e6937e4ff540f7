"""Relay configuration: one TOML file, then environment overrides, validated once.

Every key is documented in README ("Relay configuration"). Errors name the key.
Relative paths are taken from the config file's folder. An environment variable
QUOTARELAY_<SECTION>_<KEY> (upper case) overrides that key of the file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from quota.core.errors import InvalidValue
from quota.core.units import parse_duration_ms, parse_size
from quota.metrics import MetricsConfig
from relay.errors import ConfigError

_SCHEMA: dict[str, dict[str, Any]] = {
    "relay": {
        "id": "relay-1",
        "ssh_listen": "127.0.0.1:2222",
        "host_key": "var/relay_host_key",
        "agents_file": "agents.toml",
        "public_bind": "127.0.0.1",
        "public_ports": "20000-20099",
        "keepalive": "30s",
        "ciphers": "aes128-gcm@openssh.com,aes256-gcm@openssh.com",
    },
    "admin": {"listen": "127.0.0.1:8022", "token": "", "token_file": ""},
    "quota": {
        "metering": True,
        "low_water": "1M",
        "slice": "256K",
        "inactive_grace": "5m",
    },
    "stream_log": {
        "path": "var/streams.db",
        "interim": "60s",
        "flush": "1s",
        "json_lines": "var/streams.jsonl",
    },
    "udp": {"idle_timeout": "60s", "max_datagram": "65507"},
    "metrics": {"listen": "", "max_agents": 100, "per_tunnel": False},
    "billing": {
        "url": "",
        "token": "",
        "token_file": "",
        "journal": "var/journal.db",
        "interval": "1s",
        "timeout": "5s",
        "min_want": "10M",
        "offline": "pause",
        "offline_allowance": "0",
        "idle_return": "5m",
        "registry_refresh": "30s",
    },
}


@dataclass(frozen=True, slots=True, kw_only=True)
class BillingLinkConfig:
    """How the relay syncs with the billing API; absent when `billing.url` is empty."""

    url: str
    token: str
    journal: Path
    interval_ms: int
    timeout_ms: int
    min_want: int
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
    metrics: MetricsConfig = field(default_factory=MetricsConfig)  # port None: no listener


def parse_host_port(text: str, key: str) -> HostPort:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: expected HOST:PORT, got {text!r}")
    return HostPort(host=host.strip("[]"), port=int(port))


def parse_port_range(text: str, key: str) -> range:
    low, sep, high = text.partition("-")
    high = high if sep else low
    if not (low.strip().isdigit() and high.strip().isdigit()):
        raise ConfigError(f"{key}: expected FIRST-LAST ports, got {text!r}")
    first, last = int(low), int(high)
    if not 1 <= first <= last <= 65535:
        raise ConfigError(f"{key}: ports must satisfy 1 <= first <= last <= 65535, got {text!r}")
    return range(first, last + 1)


def _merge(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for section, defaults in _SCHEMA.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError(f"[{section}] must be a table")
        unknown = set(given) - set(defaults)
        if unknown:
            raise ConfigError(f"unknown key {section}.{sorted(unknown)[0]}")
        values = dict(defaults) | given
        for key, default in defaults.items():
            env = os.environ.get(f"QUOTARELAY_{section}_{key}".upper())
            if env is not None:
                values[key] = _from_env(env, default, f"{section}.{key}")
            if type(values[key]) is not type(default):
                kind = type(default).__name__
                raise ConfigError(f"{section}.{key}: expected {kind}, got {values[key]!r}")
        merged[section] = values
    unknown_sections = set(raw) - set(_SCHEMA)
    if unknown_sections:
        raise ConfigError(f"unknown section [{sorted(unknown_sections)[0]}]")
    return merged


def _from_env(text: str, default: object, key: str) -> object:
    if isinstance(default, bool):
        if text.lower() not in {"true", "false", "1", "0"}:
            raise ConfigError(f"{key}: expected true or false, got {text!r}")
        return text.lower() in {"true", "1"}
    if isinstance(default, int):
        if not text.strip().isdigit():
            raise ConfigError(f"{key}: expected a whole number, got {text!r}")
        return int(text)
    return text


def _size(values: dict[str, Any], section: str, key: str) -> int:
    try:
        return parse_size(values[key])
    except InvalidValue as exc:
        raise ConfigError(f"{section}.{key}: {exc}") from None


def _duration(values: dict[str, Any], section: str, key: str) -> int:
    try:
        return parse_duration_ms(values[key])
    except InvalidValue as exc:
        raise ConfigError(f"{section}.{key}: {exc}") from None


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> RelayConfig:
    """Read `path` (or only defaults when None), apply env and `overrides`, validate."""
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        base = path.resolve().parent
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        raw.setdefault(section, {})[key] = value
    v = _merge(raw)
    r, a, q, s = v["relay"], v["admin"], v["quota"], v["stream_log"]

    def rel(text: str) -> Path:
        p = Path(text).expanduser()
        return p if p.is_absolute() else base / p

    token = a["token"]
    if not token and a["token_file"]:
        try:
            token = rel(a["token_file"]).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"admin.token_file: cannot read: {exc}") from None
    listen = a["listen"]
    admin_listen: HostPort | Path = (
        rel(listen[5:]) if listen.startswith("unix:") else parse_host_port(listen, "admin.listen")
    )
    if not r["id"] or not r["id"].replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"relay.id: letters, digits, - and _ only, got {r['id']!r}")
    json_lines = s["json_lines"]
    return RelayConfig(
        relay_id=r["id"],
        ssh_listen=parse_host_port(r["ssh_listen"], "relay.ssh_listen"),
        host_key=rel(r["host_key"]),
        agents_file=rel(r["agents_file"]),
        public_bind=r["public_bind"],
        public_ports=parse_port_range(r["public_ports"], "relay.public_ports"),
        keepalive_ms=_duration(r, "relay", "keepalive"),
        ciphers=_ciphers(r["ciphers"]),
        admin_listen=admin_listen,
        admin_token=token,
        metering=q["metering"],
        low_water=_size(q, "quota", "low_water"),
        slice_bytes=max(1, _size(q, "quota", "slice")),
        inactive_grace_ms=_duration(q, "quota", "inactive_grace"),
        stream_log_path=rel(s["path"]),
        interim_ms=max(1, _duration(s, "stream_log", "interim")),
        flush_ms=max(1, _duration(s, "stream_log", "flush")),
        json_lines=None if not json_lines else Path("-") if json_lines == "-" else rel(json_lines),
        source=path,
        billing=_billing(v["billing"], rel),
        udp_idle_timeout_ms=max(1, _duration(v["udp"], "udp", "idle_timeout")),
        udp_max_datagram=_udp_max_datagram(v["udp"]),
        metrics=metrics_config(v["metrics"], "metrics"),
    )


def metrics_config(m: dict[str, Any], section: str) -> MetricsConfig:
    """`[metrics]`: listen ("" = off, else HOST:PORT), max_agents (>= 1), per_tunnel."""
    listen = parse_host_port(m["listen"], f"{section}.listen") if m["listen"] else None
    if not 1 <= m["max_agents"] <= 100_000:
        raise ConfigError(f"{section}.max_agents: 1..100000, got {m['max_agents']}")
    return MetricsConfig(
        host=listen.host if listen else "127.0.0.1",
        port=listen.port if listen else None,
        max_agents=m["max_agents"],
        per_tunnel=m["per_tunnel"],
    )


def _udp_max_datagram(values: dict[str, Any]) -> int:
    size = _size(values, "udp", "max_datagram")
    if not 1 <= size <= 65_535:
        raise ConfigError(f"udp.max_datagram: 1..65535 bytes (a frame's limit), got {size}")
    return size


def _billing(b: dict[str, Any], rel: Callable[[str], Path]) -> BillingLinkConfig | None:
    if not b["url"]:
        return None
    if not b["url"].startswith(("http://", "https://")):
        raise ConfigError(f"billing.url: expected http:// or https://, got {b['url']!r}")
    token = b["token"]
    if not token and b["token_file"]:
        try:
            token = rel(b["token_file"]).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"billing.token_file: cannot read: {exc}") from None
    if not token:
        raise ConfigError("billing.token: the relay token is required when billing.url is set")
    if b["offline"] not in ("pause", "continue"):
        raise ConfigError(f"billing.offline: pause or continue, got {b['offline']!r}")
    return BillingLinkConfig(
        url=b["url"],
        token=token,
        journal=rel(b["journal"]),
        interval_ms=max(10, _duration(b, "billing", "interval")),
        timeout_ms=max(10, _duration(b, "billing", "timeout")),
        min_want=_size(b, "billing", "min_want"),
        offline=b["offline"],
        offline_allowance=_size(b, "billing", "offline_allowance"),
        idle_return_ms=_duration(b, "billing", "idle_return"),
        registry_refresh_ms=max(100, _duration(b, "billing", "registry_refresh")),
    )


def _ciphers(text: str) -> tuple[str, ...]:
    names = tuple(c.strip() for c in text.split(",") if c.strip())
    if not names:
        raise ConfigError("relay.ciphers: name at least one cipher, e.g. aes128-gcm@openssh.com")
    known = {alg.decode() for alg in asyncssh.encryption.get_encryption_algs()}
    unknown = [n for n in names if n not in known]
    if unknown:
        offered = ", ".join(sorted(known))
        raise ConfigError(f"relay.ciphers: unknown cipher {unknown[0]!r} (known: {offered})")
    return names
