"""Relay configuration: one TOML file, then environment overrides, validated once.

Every key is documented in README ("Relay configuration"). Errors name the key.
Relative paths are taken from the config file's folder. An environment variable
QUOTARELAY_<SECTION>_<KEY> (upper case) overrides that key of the file.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quota.core.errors import InvalidValue
from quota.core.units import parse_duration_ms, parse_size
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
}


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
    )
