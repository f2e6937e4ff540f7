"""The stream log says why each stream paused, and for how long per reason.

A spent grant with nothing more to come is `quota`; waiting for a lease the
account can pay for is `lease_wait`; a deactivated owner is `inactive`; an
operator's pause is `operator`. (A peer that stops reading, `flow`, is shown in
tests/hostile/test_slow_reader.py.)
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from relay.streamlog.query import list_streams
from tests.rigs.billing import Billing, synced_relay
from tests.rigs.keys import AgentSpec
from tests.rigs.relay import Relay
from tests.rigs.services import DigestService, pattern, sha
from tests.rigs.ssh import Ssh, expose, local_forward
from tests.rigs.sync_proxy import SyncProxy
from tests.rigs.waits import poll

MB = 1_000_000
REASONS = ("quota", "lease_wait", "inactive", "operator", "flow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def paused_only_for(row: dict[str, Any], reason: str) -> None:
    """The row's paused time is all `reason`'s: > 0 there, 0 under every other reason."""
    by_reason = {r: row[f"paused_{r}_ms"] for r in REASONS}
    assert by_reason[reason] > 0, row
    assert {r: ms for r, ms in by_reason.items() if r != reason} == dict.fromkeys(
        (r for r in REASONS if r != reason), 0
    ), row
    assert sum(by_reason.values()) == row["paused_ms"], row


async def _rows(relay: Relay) -> list[dict[str, Any]]:
    return await list_streams(relay.db_path)


async def _one_stream(relay: Relay, state: str) -> bool:
    return [s["state"] for s in await relay.call("streams")] == [state]


async def test_a_spent_grant_is_quota_and_a_deactivated_owner_is_inactive(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """Standalone relay: out of its grant a stream logs `quota`; its owner off, `inactive`."""
    await relay.call("grant", "nas-agent", 1 * MB)
    payload = pattern(2 * MB, 31)
    async with DigestService(half_close=False) as service:
        await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{service.port}", clients)
        port = free_port()
        await local_forward(relay, agents["tech"], port, "nas:22", clients)
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        await poll(lambda: _one_stream(relay, "paused"), "the stream to pause at the grant")
        [live] = await relay.call("streams")
        assert live["pause_reason"] == "quota"
        await relay.call("grant", "nas-agent", 2 * MB)  # the rest, and 1 MB for the next stream
        writer.write_eof()
        await asyncio.wait_for(service.conns[0].eof.wait(), 30)
        assert service.conns[0].digest.hexdigest() == sha(payload)
        writer.close()

        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"a" * 100)
        await poll(lambda: len(service.conns) == 2 and service.conns[1].received == 100, "100 B")
        await relay.call("set_active", "nas-agent", False)
        await poll(lambda: _one_stream(relay, "paused"), "the stream to pause when inactive")
        [live] = await relay.call("streams")
        assert live["pause_reason"] == "inactive"
        await relay.call("set_active", "nas-agent", True)
        await poll(lambda: _one_stream(relay, "open"), "the stream to resume")
        writer.write_eof()
        await asyncio.wait_for(service.conns[1].eof.wait(), 30)
        writer.close()

    async def both_closed() -> bool:
        rows = await _rows(relay)
        return len(rows) == 2 and all(r["state"] == "closed" for r in rows)

    await poll(both_closed, "both close records")
    first, second = await _rows(relay)
    paused_only_for(first, "quota")
    paused_only_for(second, "inactive")
    assert first["pause_reason"] is None and (first["pauses"], second["pauses"]) == (1, 1)


async def test_an_operator_pause_holds_a_stream_until_resumed(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """`relay pause` stops the stream (reason `operator`), `relay resume` lets the rest through."""
    await relay.call("grant", "nas-agent", 1 * MB)
    async with DigestService(half_close=False) as service:
        await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{service.port}", clients)
        port = free_port()
        await local_forward(relay, agents["tech"], port, "nas:22", clients)
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"a" * 100)
        await poll(lambda: bool(service.conns) and service.conns[0].received == 100, "100 B")
        [live] = await relay.call("streams")
        view = await relay.call("pause_stream", live["stream_id"], True)
        assert (view["state"], view["pause_reason"]) == ("paused", "operator")
        writer.write(b"b" * 100)
        await poll(lambda: _one_stream(relay, "paused"), "the paused stream")
        assert service.conns[0].received == 100  # nothing read while paused
        await relay.call("pause_stream", live["stream_id"], False)
        writer.write_eof()
        await asyncio.wait_for(service.conns[0].eof.wait(), 30)
        assert service.conns[0].received == 200
        writer.close()

    async def closed() -> bool:
        rows = await _rows(relay)
        return len(rows) == 1 and rows[0]["state"] == "closed"

    await poll(closed, "the close record")
    [row] = await _rows(relay)
    paused_only_for(row, "operator")


async def _synced(tmp_path: Path, billing: Billing, deposit: int) -> tuple[AgentSpec, AgentSpec]:
    """An account with a subscribed client agent and a support agent."""
    account = await billing.account("acme", deposit)
    client = await billing.agent(tmp_path, account, "nas", "client")
    support = await billing.agent(tmp_path, account, "tech", "support")
    await billing.api("POST", f"/v1/agents/{client.agent_id}/subscription", {"plan": "small"})
    return client, support


async def _tunnel(
    relay: Relay, client: AgentSpec, support: AgentSpec, clients: list[Ssh]
) -> tuple[DigestService, int]:
    """Start the relay, expose a digest service through `client`, forward to it as `support`."""
    await relay.start()
    service = DigestService(half_close=False)
    await service.__aenter__()
    await expose(relay, client, f"nas:22:127.0.0.1:{service.port}", clients)
    port = free_port()
    await local_forward(relay, support, port, "nas:22", clients)
    return service, port


async def test_a_plan_billing_has_nothing_more_for_pauses_for_quota(
    tmp_path: Path, clients: list[Ssh]
) -> None:
    """Once billing granted less than asked (the plan is all there is), a pause is `quota` only."""
    billing = await Billing(tmp_path, plan_traffic=2 * MB).start()
    relay = synced_relay(tmp_path, billing, min_want="100M")
    try:
        client, support = await _synced(tmp_path, billing, deposit=10_000)
        service, port = await _tunnel(relay, client, support, clients)
        _reader, first = await asyncio.open_connection("127.0.0.1", port)
        first.write(pattern(3 * MB, 32))  # spends the plan: billing says there is no more
        await poll(lambda: _one_stream(relay, "paused"), "the stream to pause at the plan's end")
        await poll(lambda: service.conns[0].received == 2 * MB, "the plan's 2 MB")
        _reader, second = await asyncio.open_connection("127.0.0.1", port)
        second.write(b"x" * 1000)  # waits from its first byte: billing said there is no more

        async def logged() -> bool:
            rows = await _rows(relay)
            return len(rows) == 2 and rows[1]["paused_quota_ms"] > 0

        await poll(logged, "an interim record of the paused stream")
        row = (await _rows(relay))[1]
        assert (row["state"], row["pause_reason"], row["bytes_up"]) == ("paused", "quota", 0)
        paused_only_for(row, "quota")
        first.close()
        second.close()
        await service.__aexit__(None, None, None)
    finally:
        await relay.stop()
        await billing.close()


async def test_a_lease_on_its_way_pauses_for_lease_wait(tmp_path: Path, clients: list[Ssh]) -> None:
    """The account can pay, billing answers slowly: the stream waits `lease_wait`, never `quota`."""
    billing = await Billing(tmp_path, plan_traffic=100 * MB).start()
    try:
        client, support = await _synced(tmp_path, billing, deposit=10_000)
        async with SyncProxy(billing.url, delay_s=0.3) as proxy:
            relay = synced_relay(tmp_path, billing, url=proxy.url, min_want="1M")
            try:
                service, port = await _tunnel(relay, client, support, clients)
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
                payload = pattern(3 * MB, 33)
                writer.write(payload)
                writer.write_eof()
                await poll(lambda: bool(service.conns), "the service's connection")
                await asyncio.wait_for(service.conns[0].eof.wait(), 60)
                assert service.conns[0].digest.hexdigest() == sha(payload)
                writer.close()
                await service.__aexit__(None, None, None)

                async def closed() -> bool:
                    rows = await _rows(relay)
                    return len(rows) == 1 and rows[0]["state"] == "closed"

                await poll(closed, "the close record")
                [row] = await _rows(relay)
                assert row["pauses"] >= 1
                paused_only_for(row, "lease_wait")
            finally:
                await relay.stop()
    finally:
        await billing.close()


async def test_an_operator_pause_holds_a_download_until_resumed(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """Paused with 20 MB on its way from the endpoint, a stream passes no more than what was
    already in flight (windows and socket buffers); resumed, the rest arrives byte-exact."""
    await relay.call("grant", "nas-agent", 1 << 40)
    body = pattern(20 * MB, 5)
    async with DigestService(send=body, half_close=True) as service:
        await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{service.port}", clients)
        port = free_port()
        await local_forward(relay, agents["tech"], port, "nas:22", clients)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
        got = bytearray(await reader.readexactly(MB))  # then it stops reading: the path fills
        [live] = await relay.call("streams")
        view = await relay.call("pause_stream", live["stream_id"], True)
        assert view["pause_reason"] == "operator"
        # drain what was in flight: reading stops once 1 s passes with nothing new
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(1 << 16), 1.0)
            except TimeoutError:
                break
            assert chunk, "the stream ended while paused"
            got += chunk
        in_flight = len(got) - MB
        print(f"in flight when paused: {in_flight} bytes")
        assert in_flight < 12 * MB, f"{in_flight} bytes passed a paused stream"
        await relay.call("pause_stream", live["stream_id"], False)
        got += await asyncio.wait_for(reader.read(), 60)
        writer.close()
    assert len(got) == len(body) and sha(bytes(got)) == sha(body)
