"""Fixtures for UDP tests: agents with keys, a relay process, agent processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.rigs.agent import AgentProc
from tests.rigs.keys import AgentSpec, make_agent
from tests.rigs.relay import Relay


@pytest.fixture
def agents(tmp_path: Path) -> dict[str, AgentSpec]:
    return {
        "nas": make_agent(tmp_path, "nas-agent", "acme", "client"),
        "tech": make_agent(tmp_path, "tech", "acme", "support"),
        "gx": make_agent(tmp_path, "gx-agent", "globex", "client"),
        "gxtech": make_agent(tmp_path, "gx-tech", "globex", "support"),
        "idle": make_agent(tmp_path, "idle-agent", "acme", "client", active=False),
    }


@pytest.fixture
async def relay(
    tmp_path: Path, agents: dict[str, AgentSpec], request: pytest.FixtureRequest
) -> AsyncIterator[Relay]:
    """A relay of the workers an indirect parameter asks for (one process without one)."""
    extra: dict[str, dict[str, object]] = {"udp": {"max_datagram": "9000"}}
    extra["relay"] = {"workers": getattr(request, "param", 1)}
    r = Relay(tmp_path, list(agents.values()), extra=extra)
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def procs() -> AsyncIterator[list[AgentProc]]:
    """Collects agent processes a test starts and stops them all at the end."""
    started: list[AgentProc] = []
    yield started
    for p in started:
        await p.stop()
