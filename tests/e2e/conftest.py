"""Fixtures for end-to-end tests: agents with keys, a relay process, ssh clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness import AgentSpec, Relay, Ssh, make_agent


@pytest.fixture
def agents(tmp_path: Path) -> dict[str, AgentSpec]:
    return {
        "nas": make_agent(tmp_path, "nas-agent", "acme", "client"),
        "web": make_agent(tmp_path, "web-agent", "acme", "client"),
        "tech": make_agent(tmp_path, "tech", "acme", "support"),
        "dual": make_agent(tmp_path, "dual-agent", "acme", "dual"),
        "other": make_agent(tmp_path, "other-tech", "globex", "support"),
        "idle": make_agent(tmp_path, "idle-agent", "acme", "client", active=False),
    }


@pytest.fixture
async def relay(tmp_path: Path, agents: dict[str, AgentSpec]) -> AsyncIterator[Relay]:
    r = Relay(tmp_path, list(agents.values()))
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def clients() -> AsyncIterator[list[Ssh]]:
    """Collects ssh clients a test starts and stops them all at the end."""
    started: list[Ssh] = []
    yield started
    for c in started:
        await c.stop()


async def expose(relay: Relay, agent: AgentSpec, spec: str, clients: list[Ssh]) -> Ssh:
    """`ssh -N -R spec relay` as a client agent; returns once the relay confirmed it."""
    ssh = Ssh(relay, agent, "-N", "-R", spec, "relay")
    clients.append(ssh)
    await ssh.start("-v")
    await ssh.wait_for_line("remote forward success")
    return ssh


async def local_forward(
    relay: Relay, agent: AgentSpec, port: int, target: str, clients: list[Ssh]
) -> Ssh:
    """`ssh -N -L port:target relay` as a support agent; returns once it listens."""
    ssh = Ssh(relay, agent, "-N", "-L", f"127.0.0.1:{port}:{target}", "relay")
    clients.append(ssh)
    await ssh.start("-v")
    await ssh.wait_for_line(f"Local forwarding listening on 127.0.0.1 port {port}")
    await ssh.wait_for_line("Entering interactive session")
    return ssh
