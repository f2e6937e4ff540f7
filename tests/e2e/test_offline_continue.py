"""`billing.offline = "continue"`: the allowance at once, exact accounts when billing is back."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from relay.streamlog.query import totals
from tests.e2e.test_sync import Pacer, _setup, _start, _tunnel
from tests.rigs.billing import Billing, synced_relay
from tests.rigs.relay import Relay
from tests.rigs.services import DigestService
from tests.rigs.ssh import Ssh
from tests.rigs.waits import poll

ALLOWANCE = 500_000
LEASE = 100_000  # floor and ceiling: every lease the relay holds is this size


@pytest.mark.parametrize("workers", [1, 2])
async def test_offline_continue_hands_out_the_allowance_at_once_then_bills_every_byte(
    tmp_path: Path, clients: list[Ssh], workers: int
) -> None:
    """Billing stopped: 500 KB pass at the offered 400 KB/s at once; restarted: billed exactly."""
    billing = Billing(tmp_path, plan_traffic=10**9)
    await billing.start()
    account, client, support = await _setup(tmp_path, billing)
    relay = synced_relay(
        tmp_path,
        billing,
        offline="continue",
        offline_allowance=str(ALLOWANCE),
        min_want=str(LEASE),
        max_want=str(LEASE),
    )
    relay.extra["relay"]["workers"] = workers  # with 2: the allowance goes out as sub-leases
    await _start(relay, client, support)
    try:
        async with DigestService(half_close=False) as service:
            port = await _tunnel(relay, client, support, service, clients)
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            pacer = Pacer(writer, chunk=4096)  # about 400 KB/s, as in the issue
            task = asyncio.create_task(pacer.run())
            await poll(lambda: bool(service.conns) and service.conns[0].received > LEASE, "traffic")
            conn = service.conns[0]
            before = conn.received  # the billing API may take a moment to stop
            await billing.stop()
            # the lease left (at most one) runs out, then the whole allowance passes at once
            await poll(lambda: conn.received >= before + ALLOWANCE, "the offline allowance", 10)
            await poll(lambda: _paused(relay), "the stream to pause once the allowance is spent")
            assert conn.received <= before + 2 * LEASE + ALLOWANCE
            await billing.start()  # the same database and port
            await poll(lambda: conn.received > before + 2 * LEASE + ALLOWANCE, "leases again", 20)
            pacer.stop.set()
            await task
            writer.write_eof()
            await asyncio.wait_for(conn.eof.wait(), 30)
            assert (conn.received, conn.digest.hexdigest()) == (
                pacer.sent,
                pacer.digest.hexdigest(),
            )
            writer.close()
        status = await relay.call("status")
        assert status["sync"]["offline_bytes"] == ALLOWANCE
        used = [e["bytes"] for e in _events(relay, "offline_allowance_used")]
        assert used == [ALLOWANCE]  # handed out in one go, not one held chunk a round

        async def billed() -> bool:
            return await billing.usage_total(account, client.agent_id) == pacer.sent

        await poll(billed, "billing to count every byte relayed, offline ones included", 30)

        async def logged() -> bool:
            return [r["bytes_total"] for r in await totals(relay.db_path, by="agent")] == [
                pacer.sent
            ]

        await poll(logged, "the stream log to agree with billing")
        held = (await relay.call("agent", client.agent_id))["remaining"]
        assert held <= LEASE  # no offline byte left over on top of the lease
    finally:
        await relay.stop()
        await billing.close()


async def _paused(relay: Relay) -> bool:
    return [s["state"] for s in await relay.call("streams")] == ["paused"]


def _events(relay: Relay, name: str) -> list[dict[str, Any]]:
    """The relay's log lines of event `name`."""
    lines = (relay.tmp / "relay.log").read_text().splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    return [e for e in events if e.get("event") == name]
