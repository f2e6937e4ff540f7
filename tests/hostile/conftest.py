"""Fixtures the hostile tests share: the default pair of agents and the ssh clients to stop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.rigs.keys import AgentSpec, make_agent
from tests.rigs.ssh import Ssh


@pytest.fixture
def agents(tmp_path: Path) -> dict[str, AgentSpec]:
    """A paying client agent and a support agent of the same account (a module may override)."""
    return {
        "nas": make_agent(tmp_path, "nas-agent", "acme", "client"),
        "tech": make_agent(tmp_path, "tech", "acme", "support"),
    }


@pytest.fixture
async def clients() -> AsyncIterator[list[Ssh]]:
    """The ssh clients a test starts; each is stopped at the end."""
    started: list[Ssh] = []
    yield started
    for c in started:
        await c.stop()
