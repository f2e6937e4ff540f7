"""Support agents pay nothing: their state shows as `n/a`, never `depleted`, and is not counted."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from quota.core.billing import NOT_METERED, AgentRole
from tests.rigs.keys import make_agent
from tests.rigs.relay import ROOT, TOKEN, Relay


def test_only_a_support_agent_shows_n_a() -> None:
    """The core's rule: paying roles show their bucket's state, support shows n/a."""
    assert AgentRole.SUPPORT.shown_state("depleted") == NOT_METERED == "n/a"
    assert AgentRole.CLIENT.shown_state("depleted") == "depleted"
    assert AgentRole.DUAL.shown_state("active") == "active"


async def test_relay_agents_and_status_show_support_as_n_a(tmp_path: Path) -> None:
    """A real relay: the support agent is n/a in /v1/agents and `relay agents`; status counts 1."""
    agents = [
        make_agent(tmp_path, "nas-agent", "acme", "client"),
        make_agent(tmp_path, "tech", "acme", "support"),
    ]
    relay = await Relay(tmp_path, agents).start()
    try:
        states = {a["agent_id"]: a["state"] for a in await relay.call("agents")}
        assert states == {"nas-agent": "depleted", "tech": "n/a"}
        assert (await relay.call("status"))["depleted"] == 1
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tools.cli", "relay", "agents",
            "--admin", f"127.0.0.1:{relay.admin_port}", "--token", TOKEN,
            cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(cli.communicate(), 30)
        rows = {line.split()[0]: line.split() for line in out.decode().splitlines()[1:]}
        assert rows["tech"][2:4] == ["support", "n/a"]
        assert rows["nas-agent"][2:4] == ["client", "depleted"]
    finally:
        await relay.stop()
