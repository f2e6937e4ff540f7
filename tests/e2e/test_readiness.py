"""A relay's `/readyz` follows the billing API: down is not ready unless offline continues."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.rigs.billing import Billing, synced_relay
from tests.rigs.relay import Relay
from tests.rigs.waits import poll


@pytest.fixture
async def billing(tmp_path: Path) -> AsyncIterator[Billing]:
    b = Billing(tmp_path)
    await b.start()
    yield b
    await b.close()


async def _readyz(relay: Relay) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{relay.admin_port}/readyz"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(url) as resp,
    ):
        return resp.status, await resp.json()


async def _ready_then_billing_stops(
    tmp_path: Path, billing: Billing, offline: str
) -> tuple[int, dict[str, Any]]:
    """Start a synced relay, check it is ready, stop billing; /readyz once the relay noticed."""
    relay = synced_relay(tmp_path / "relay", billing, offline=offline, interval="100ms")
    relay.tmp.mkdir()
    await relay.start()
    try:
        assert (await _readyz(relay))[0] == 200
        await billing.stop()

        async def noticed() -> bool:
            status = await relay.call("status")
            return int(status["sync"].get("sync_failures", 0)) > 0

        await poll(noticed, "a failed sync after billing stopped")
        return await _readyz(relay)
    finally:
        await relay.stop()


async def test_billing_down_with_offline_pause_is_not_ready(
    tmp_path: Path, billing: Billing
) -> None:
    """billing.offline = "pause" and billing stopped: /readyz is 503 and names the billing API."""
    status, body = await _ready_then_billing_stops(tmp_path, billing, "pause")
    assert status == 503 and body["status"] == "not ready"
    assert any("billing API unreachable" in r for r in body["reasons"])


async def test_billing_down_with_offline_continue_stays_ready(
    tmp_path: Path, billing: Billing
) -> None:
    """billing.offline = "continue" and billing stopped: /readyz is 200 with a note saying so."""
    status, body = await _ready_then_billing_stops(tmp_path, billing, "continue")
    assert (status, body["reasons"]) == (200, [])
    assert any("offline policy 'continue'" in n for n in body["notes"])
