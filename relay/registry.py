"""Agents allowed to log in: read from a TOML registry file.

Invariants: an agent id is unique; a public key belongs to one agent only; the
role decides what an agent may do (client: register tunnels and pay; support:
reach its account's endpoints; dual: both). The file is re-read on `reload()`,
so operators can add agents without a restart.

    [[agent]]
    id = "nas-agent"
    account = "acme"
    role = "client"            # client | support | dual
    keys = ["ssh-ed25519 AAAA... user@host"]
    active = true              # optional; an inactive client agent cannot open tunnels
    limits = { public_ports_per_agent = 16 }   # optional; fair shares above the config's

`limits` overrides, for this agent only, any key of the relay config's
`[shares]` section (quota.core.shares.ShareLimits); unknown keys are refused.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from quota.core.billing import AgentRole as Role  # re-exported: relay code says Role
from quota.core.shares import Share
from relay.errors import ConfigError

__all__ = ["Agent", "Registry", "Role", "key_blob"]

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Agent:
    """An agent as the relay knows it; `Role` is the domain's `AgentRole`."""

    agent_id: str
    account: str
    role: Role
    keys: frozenset[bytes]  # public key blobs
    active: bool = True
    limits: tuple[tuple[str, int], ...] = ()  # share overrides: (ShareLimits key, limit)


def key_blob(text: str) -> bytes | None:
    """The public key blob of an OpenSSH public key line, or None if it is not one."""
    try:
        return bytes(asyncssh.import_public_key(text).public_data)
    except (asyncssh.KeyImportError, ValueError):
        return None


def _parse_key(text: object, where: str) -> bytes:
    if not isinstance(text, str):
        raise ConfigError(f"{where}: a key must be a string in OpenSSH format")
    try:
        key = asyncssh.import_public_key(text)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ConfigError(f"{where}: not a valid public key: {exc}") from None
    return bytes(key.public_data)


def _parse_agent(entry: object, index: int) -> Agent:
    where = f"agent[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(entry) - {"id", "account", "role", "keys", "active", "limits"}
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    agent_id, account = entry.get("id"), entry.get("account")
    for key, value in (("id", agent_id), ("account", account)):
        if not isinstance(value, str) or not _ID_RE.match(value):
            raise ConfigError(f"{where}.{key}: letters, digits, '.', '_', '-' (got {value!r})")
    try:
        role = Role(entry.get("role", "client"))
    except ValueError:
        raise ConfigError(f"{where}.role: one of client, support, dual") from None
    keys = entry.get("keys", [])
    if not isinstance(keys, list) or not keys:
        raise ConfigError(f"{where}.keys: a non-empty list of public keys")
    active = entry.get("active", True)
    if not isinstance(active, bool):
        raise ConfigError(f"{where}.active: true or false")
    blobs = frozenset(_parse_key(k, f"{where}.keys[{i}]") for i, k in enumerate(keys))
    limits = _parse_limits(entry.get("limits", {}), f"{where}.limits")
    assert isinstance(agent_id, str) and isinstance(account, str)
    return Agent(
        agent_id=agent_id, account=account, role=role, keys=blobs, active=active, limits=limits
    )


_SHARE_KEYS = frozenset(share.value for share in Share)


def _parse_limits(table: object, where: str) -> tuple[tuple[str, int], ...]:
    """An agent's share overrides: known keys, whole numbers >= 0."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: a table, as in limits = {{ public_ports_per_agent = 16 }}")
    for key, value in table.items():
        if key not in _SHARE_KEYS:
            known = ", ".join(sorted(_SHARE_KEYS))
            raise ConfigError(f"{where}.{key}: unknown limit (one of {known})")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}.{key}: a whole number >= 0, got {value!r}")
    return tuple(sorted(table.items()))


class Registry:
    """The agents of one registry file, looked up by id and key."""

    def __init__(self, path: Path | None) -> None:
        """Read `path`; with None the agents come from `replace` (the billing API's registry)."""
        self.path = path
        self._agents: dict[str, Agent] = {}
        if path is not None:
            self.reload()

    def replace(self, agents: list[Agent]) -> None:
        """Take a new set of agents at once (a refresh from the billing API)."""
        self._agents = {a.agent_id: a for a in agents}

    def reload(self) -> None:
        if self.path is None:
            return
        try:
            raw = tomllib.loads(self.path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"relay.agents_file: not found: {self.path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"relay.agents_file: {self.path}: not valid TOML: {exc}") from None
        entries = raw.get("agent", [])
        if not isinstance(entries, list):
            raise ConfigError("relay.agents_file: use [[agent]] tables")
        agents: dict[str, Agent] = {}
        owners: dict[bytes, str] = {}
        for index, entry in enumerate(entries):
            agent = _parse_agent(entry, index)
            if agent.agent_id in agents:
                raise ConfigError(f"agent[{index}].id: duplicate agent id {agent.agent_id!r}")
            for blob in agent.keys:
                if blob in owners:
                    raise ConfigError(
                        f"agent[{index}].keys: key already belongs to agent {owners[blob]!r}"
                    )
                owners[blob] = agent.agent_id
            agents[agent.agent_id] = agent
        self._agents = agents

    def get(self, agent_id: str) -> Agent | None:
        return self._agents.get(agent_id)

    def authenticate(self, agent_id: str, key_blob: bytes) -> Agent | None:
        agent = self._agents.get(agent_id)
        if agent is None or key_blob not in agent.keys:
            return None
        return agent

    def __iter__(self) -> Iterator[Agent]:
        return iter(self._agents.values())
