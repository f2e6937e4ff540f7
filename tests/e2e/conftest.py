"""Fixtures for end-to-end tests: agents with keys, a relay process, ssh clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.rigs.keys import AgentSpec, make_agent
from tests.rigs.relay import Relay
from tests.rigs.ssh import Ssh


@pytest.fixture
def agents(tmp_path: Path) -> dict[str, AgentSpec]:
    tech = make_agent(tmp_path, "tech", "acme", "support")
    tech.limits = {"channels_per_connection": 256}  # 200 streams on one -L (test_quota)
    return {
        "nas": make_agent(tmp_path, "nas-agent", "acme", "client"),
        "web": make_agent(tmp_path, "web-agent", "acme", "client"),
        "tech": tech,
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
