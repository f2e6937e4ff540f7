"""A funded agent's tunnel primes its lease: its first stream never waits (issue 10, point 2).

A relay process synced every second to a billing process; the client agent's
account can pay. The relay asks the lease when the tunnel opens, and answers
the `-R` once the lease is in, so the stream that follows finds bytes waiting.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from relay.streamlog.query import list_streams
from tests.e2e.test_pause_reasons import REASONS, free_port
from tests.rigs.billing import Billing, synced_relay
from tests.rigs.keys import AgentSpec
from tests.rigs.relay import Relay
from tests.rigs.services import DigestService, pattern, sha
from tests.rigs.ssh import Ssh, expose, local_forward
from tests.rigs.waits import poll

MB = 1_000_000
FLOOR = 16 * MB  # billing.min_want: the lease a tunnel primes
PAYLOAD = 8 * MB  # under the floor: the primed lease alone carries the stream


async def _cast(tmp_path: Path, billing: Billing) -> tuple[AgentSpec, AgentSpec]:
    """acme: client `nas` subscribed to a plan (it can pay) and support `tech`."""
    acme = await billing.account("acme", 10_000)
    client = await billing.agent(tmp_path, acme, "nas", "client")
    support = await billing.agent(tmp_path, acme, "tech", "support")
    await billing.api("POST", f"/v1/agents/{client.agent_id}/subscription", {"plan": "small"})
    return client, support


async def _view(relay: Relay) -> dict[str, dict[str, Any]]:
    return {a["agent_id"]: a for a in await relay.call("agents")}


async def _closed(relay: Relay) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    async def written() -> bool:
        rows[:] = [r for r in await list_streams(relay.db_path) if r["state"] == "closed"]
        return len(rows) == 1

    await poll(written, "the stream's closing record")
    return rows


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_funded_agents_first_stream_never_pauses(
    tmp_path: Path, clients: list[Ssh], workers: int
) -> None:
    """The tunnel's reply comes with its lease in; the stream through it logs 0 pauses."""
    billing = await Billing(tmp_path, plan_traffic=100 * MB).start()
    try:
        client, support = await _cast(tmp_path, billing)
        relay = synced_relay(tmp_path, billing, interval="1s", min_want="16M")
        relay.extra["relay"]["workers"] = workers  # with 2: the worker waits for the round
        await relay.start()
        try:
            await poll(lambda: _knows(relay, client, support), "the relay to learn the agents")
            async with DigestService(half_close=False) as service:
                await expose(relay, client, f"nas:22:127.0.0.1:{service.port}", clients)
                view = await _view(relay)
                assert view[client.agent_id]["granted"] == FLOOR  # in before the reply
                assert view[support.agent_id]["granted"] == 0
                port = free_port()
                await local_forward(relay, support, port, "nas:22", clients)
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
                payload = pattern(PAYLOAD, 41)
                writer.write(payload)
                writer.write_eof()
                await poll(lambda: bool(service.conns), "the service's connection")
                await asyncio.wait_for(service.conns[0].eof.wait(), 60)
                assert service.conns[0].digest.hexdigest() == sha(payload)
                writer.close()
            [row] = await _closed(relay)
            assert (row["bytes_up"], row["pauses"], row["paused_ms"]) == (PAYLOAD, 0, 0), row
            assert all(row[f"paused_{r}_ms"] == 0 for r in REASONS), row
        finally:
            await relay.stop()
    finally:
        await billing.close()


async def _knows(relay: Relay, *agents: AgentSpec) -> bool:
    listed = await _view(relay)
    return all(a.agent_id in listed for a in agents)
