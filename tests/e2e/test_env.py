"""Each program reads only its own environment prefix, logs the names it took, and says
`billing_online` only once the agent registry answered."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.rigs.billing import ADMIN, RELAY_TOKEN, Billing
from tests.rigs.keys import AgentSpec, make_agent
from tests.rigs.relay import Relay
from tests.rigs.waits import poll


@pytest.fixture
async def billing(tmp_path: Path) -> AsyncIterator[Billing]:
    b = Billing(tmp_path)
    await b.start()
    yield b
    await b.close()


def _events(relay: Relay, name: str) -> list[dict[str, Any]]:
    lines = (relay.tmp / "relay.log").read_text().splitlines()
    found = [json.loads(line) for line in lines if line.startswith("{")]
    return [e for e in found if e.get("event") == name]


async def _registry_answers(relay: Relay, counter: str, count: int) -> None:
    async def done() -> bool:
        return int((await relay.call("status"))["sync"].get(counter, 0)) >= count

    await poll(done, f"{count} {counter} on the relay")


async def test_the_cli_billing_settings_are_not_the_relays(
    tmp_path: Path, billing: Billing
) -> None:
    """QUOTARELAY_BILLING_URL/_TOKEN (the CLI's, with the admin token) leave a relay alone."""
    folder = tmp_path / "relay"
    folder.mkdir()
    nas: AgentSpec = make_agent(folder, "nas-agent", "acme", "client")
    cli_env = {"QUOTARELAY_BILLING_URL": billing.url, "QUOTARELAY_BILLING_TOKEN": ADMIN}
    relay = Relay(folder, [nas], env=cli_env)
    await relay.start()
    try:
        listed = [a["agent_id"] for a in await relay.call("agents")]
        assert listed == ["nas-agent"]  # its agents file, not a billing registry
        status = await relay.call("status")
        assert status["sync"] == {}  # no quota agent: the relay has no billing link
        (started,) = _events(relay, "config_from_env")
        assert (started["keys"], started["ignored"]) == ([], [])
    finally:
        await relay.stop()


async def test_relay_prefix_sets_billing_and_names_only_are_logged(
    tmp_path: Path, billing: Billing
) -> None:
    """QUOTARELAY_RELAY_BILLING_* link the relay; the log names the keys, never the token."""
    env = {
        "QUOTARELAY_RELAY_BILLING_URL": billing.url,
        "QUOTARELAY_RELAY_BILLING_TOKEN": RELAY_TOKEN,
        "QUOTARELAY_RELAY_BILLING_REGISTRY_REFRESH": "200ms",
    }
    typo = {"QUOTARELAY_RELAY_BILLING_INTERVALL": "5s"}  # named as ignored, not read
    relay = Relay(tmp_path, [], extra={"billing": {"interval": "100ms"}}, env={**env, **typo})
    await relay.start()
    try:
        await _registry_answers(relay, "registry_refreshes", 1)
        await poll(lambda: bool(_events(relay, "billing_online")), "billing_online")
        (started,) = _events(relay, "config_from_env")
        assert (started["keys"], started["ignored"]) == (sorted(env), sorted(typo))
        assert RELAY_TOKEN not in (relay.tmp / "relay.log").read_text()
    finally:
        await relay.stop()


async def test_a_refused_registry_is_not_billing_online(tmp_path: Path, billing: Billing) -> None:
    """With a token the registry refuses (403), the relay never logs billing_online."""
    env = {
        "QUOTARELAY_RELAY_BILLING_URL": billing.url,
        "QUOTARELAY_RELAY_BILLING_TOKEN": ADMIN,  # an admin token is not a relay token
        "QUOTARELAY_RELAY_BILLING_REGISTRY_REFRESH": "100ms",
    }
    relay = Relay(tmp_path, [], extra={"billing": {"interval": "100ms"}}, env=env)
    await relay.start()
    try:
        await _registry_answers(relay, "registry_failures", 3)
        (refused, *_) = _events(relay, "registry_refresh_failed")
        assert "HTTP 403" in refused["error"] and "it takes a relay token" in refused["error"]
        assert _events(relay, "billing_online") == []
    finally:
        await relay.stop()
