"""The agent's settings (TOML file, then flags) and its tunnel specs, parsed once.

    [agent]
    relay = "relay.example.com:2222"   # HOST:PORT of the relay's SSH front
    user = "nas-agent"                 # the agent id the relay knows
    key = "~/.ssh/nas-agent"           # private key file (OpenSSH format)
    known_hosts = "~/.ssh/known_hosts" # "ignore" accepts any relay host key (tests only)
    backoff_max = "30s"                # longest wait between reconnect attempts
    idle_timeout = "120s"              # a local UDP flow idle this long is forgotten

Invariants: a flag beats the environment (QUOTARELAY_AGENT_AGENT_<KEY>, e.g.
QUOTARELAY_AGENT_AGENT_USER; no other variable is read), the environment beats
the file, the file beats the default; keys, types and
defaults are `quota.contract.files.AgentFile`; every problem is reported at once,
each naming its key or flag. Specs are validated before the agent connects, so a typo never
reaches the relay. Relative paths are taken from the config file's folder.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quota.contract.config import Address, Environment, Problems, decode_file, decode_value
from quota.contract.files import AgentFile

ENV_PROGRAM = "agent"  # QUOTARELAY_AGENT_<SECTION>_<KEY>


class AgentConfigError(ValueError):
    """The agent's config or a spec is wrong; the message names which."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    host: str
    port: int
    user: str
    key: Path
    known_hosts: Path | None  # None: accept any host key
    backoff_max_ms: int
    idle_timeout_ms: int
    env_keys: tuple[str, ...] = field(default=())  # variables that set keys (names only)
    env_ignored: tuple[str, ...] = field(default=())  # variables with the prefix, no key


@dataclass(frozen=True, slots=True, kw_only=True)
class Expose:
    """`--udp/--tcp [NAME:]PORT:HOST:HPORT`: an endpoint NAME, or a public PORT (0: any)."""

    proto: str  # "udp" | "tcp"
    name: str  # "" for a public port
    port: int
    host: str
    host_port: int
    text: str

    @property
    def listen_host(self) -> str:
        """What the relay is asked to forward (UDP names ride on a "udp/" prefix)."""
        return f"udp/{self.name}" if self.proto == "udp" else self.name


@dataclass(frozen=True, slots=True, kw_only=True)
class Connect:
    """`--udp/--tcp [BIND:]LPORT:NAME:PORT`: a local listener carried to an endpoint."""

    proto: str
    bind: str
    local_port: int
    name: str
    port: int
    text: str


def _port(text: str, what: str, spec: str, allow_zero: bool = False) -> int:
    if not text.isdigit() or not (0 if allow_zero else 1) <= int(text) <= 65535:
        raise AgentConfigError(f"{spec}: {what} must be a port number, got {text!r}")
    return int(text)


def parse_expose(proto: str, text: str) -> Expose:
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not parts[1]:
        raise AgentConfigError(f"--{proto} {text}: expected [NAME:]PORT:HOST:HPORT")
    head, host, hport = parts
    name, sep, port = head.rpartition(":")
    if not sep:
        name, port = "", head
    if name and (not name.replace("-", "").replace("_", "").replace(".", "").isalnum()):
        raise AgentConfigError(f"--{proto} {text}: endpoint names are letters, digits, . - _")
    return Expose(
        proto=proto,
        name=name.lower(),
        port=_port(port, "the port", f"--{proto} {text}", allow_zero=not name),
        host=host.strip("[]"),
        host_port=_port(hport, "the target port", f"--{proto} {text}"),
        text=text,
    )


def parse_connect(proto: str, text: str) -> Connect:
    parts = text.split(":")
    if len(parts) == 3:
        parts.insert(0, "127.0.0.1")
    if len(parts) != 4 or not parts[2]:
        raise AgentConfigError(f"--{proto} {text}: expected [BIND:]LPORT:NAME:PORT")
    bind, lport, name, port = parts
    spec = f"--{proto} {text}"
    return Connect(
        proto=proto,
        bind=bind,
        local_port=_port(lport, "the local port", spec, allow_zero=True),
        name=name.lower(),
        port=_port(port, "the port", spec),
        text=text,
    )


def _read_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise AgentConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AgentConfigError(f"{path}: not valid TOML: {exc}") from None


def load_agent_config(
    path: Path | None, flags: dict[str, str | None], env: Mapping[str, str] | None = None
) -> AgentConfig:
    """Merge defaults, the file at `path`, `env` (default: the process's) and the flags
    given; report every problem at once."""
    raw = _read_file(path)
    given = {k: v for k, v in flags.items() if v is not None}
    if given:
        table = raw.get("agent", {})
        raw["agent"] = dict(table) | given if isinstance(table, dict) else table
    names = Environment(ENV_PROGRAM, {})
    flagged = {names.name("agent", key) for key in given}  # a flag beats the variable
    variables = os.environ if env is None else env
    environment = Environment(ENV_PROGRAM, {k: v for k, v in variables.items() if k not in flagged})
    problems = Problems()
    a = decode_file(AgentFile, raw, problems, environment).agent
    base = path.resolve().parent if path is not None else Path.cwd()

    def rel(text: str) -> Path:
        p = Path(text).expanduser()
        return p if p.is_absolute() else base / p

    relay = decode_value(Address, a.relay, "agent.relay (--relay)", problems)
    if not a.user:
        problems.add("agent.user (--user)", "the agent id is required")
    if not a.key:
        problems.add("agent.key (--key)", "a private key file is required")
    problems.raise_as(AgentConfigError)
    return AgentConfig(
        host=relay.host,
        port=relay.port,
        user=a.user,
        key=rel(a.key),
        known_hosts=None if a.known_hosts == "ignore" else rel(a.known_hosts),
        backoff_max_ms=max(100, a.backoff_max),
        idle_timeout_ms=max(1, a.idle_timeout),
        env_keys=tuple(sorted(environment.used)),
        env_ignored=environment.ignored(),
    )
