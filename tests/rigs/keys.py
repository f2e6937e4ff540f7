"""Agent keys and the relay's agents file.

Keys are fresh ed25519 pairs written with mode 0600 from creation (OpenSSH and
the agent refuse looser ones); the public line sits beside the private key, in
`<key>.pub`. Files holding tokens are written the same way (`write_private`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh


@dataclass
class AgentSpec:
    agent_id: str
    account: str
    role: str
    key_path: Path
    public: str
    active: bool = True
    limits: dict[str, int] = field(default_factory=dict)  # the registry entry's `limits`


def write_private(path: Path, data: bytes) -> None:
    """Write a new `path` with mode 0600 from its creation (the services refuse wider modes)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def keypair(path: Path) -> str:
    """Write a new ed25519 key pair at `path` (and `path`.pub); return the public key line."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    write_private(path, key.export_private_key())
    public = key.export_public_key().decode().strip()
    path.with_name(path.name + ".pub").write_text(public + "\n")
    return public


def make_agent(tmp: Path, agent_id: str, account: str, role: str, active: bool = True) -> AgentSpec:
    path = tmp / f"{agent_id}.key"
    return AgentSpec(agent_id, account, role, path, keypair(path), active)


def agents_toml(agents: list[AgentSpec]) -> str:
    parts = []
    for a in agents:
        parts.append(
            f'[[agent]]\nid = "{a.agent_id}"\naccount = "{a.account}"\nrole = "{a.role}"\n'
            f'keys = ["{a.public}"]\nactive = {"true" if a.active else "false"}\n'
        )
        if a.limits:
            pairs = ", ".join(f"{k} = {v}" for k, v in a.limits.items())
            parts[-1] += f"limits = {{ {pairs} }}\n"
    return "\n".join(parts)
