"""The relay synced with a real billing API process: leases, top-ups, pushes, outages."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.streamlog.query import list_streams, totals
from tests.rigs.billing import Billing, synced_relay
from tests.rigs.keys import AgentSpec
from tests.rigs.relay import Relay
from tests.rigs.services import DigestService, pattern, sha
from tests.rigs.ssh import Ssh, expose, local_forward
from tests.rigs.sync_proxy import SyncProxy
from tests.rigs.waits import poll

MB = 1_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def billing(tmp_path: Path, database: str) -> AsyncIterator[Billing]:
    """The billing API process, on SQLite and on PostgreSQL (`database`)."""
    b = Billing(tmp_path, plan_traffic=4 * MB, package_traffic=4 * MB, database=database)
    await b.start()
    yield b
    await b.close()


async def _setup(
    tmp_path: Path, billing: Billing, *, deposit: int = 10_000
) -> tuple[str, AgentSpec, AgentSpec]:
    """An account with coin, a subscribed client agent and a support agent."""
    account = await billing.account("acme", deposit)
    client = await billing.agent(tmp_path, account, "nas", "client")
    support = await billing.agent(tmp_path, account, "tech", "support")
    await billing.api("POST", f"/v1/agents/{client.agent_id}/subscription", {"plan": "small"})
    return account, client, support


async def _start(relay: Relay, *agents: AgentSpec) -> None:
    await relay.start()

    async def known() -> bool:
        listed = {a["agent_id"] for a in await relay.call("agents")}
        return all(a.agent_id in listed for a in agents)

    await poll(known, "the relay to learn the agents from the billing API")


async def _tunnel(
    relay: Relay, client: AgentSpec, support: AgentSpec, service: DigestService, clients: list[Ssh]
) -> int:
    await expose(relay, client, f"nas:22:127.0.0.1:{service.port}", clients)
    port = free_port()
    await local_forward(relay, support, port, "nas:22", clients)
    return port


async def _stream_state(relay: Relay) -> list[str]:
    return [s["state"] for s in await relay.call("streams")]


async def test_whole_story_pause_then_auto_topup_resumes_same_connection(
    tmp_path: Path, billing: Billing, clients: list[Ssh]
) -> None:
    """Subscribe, relay a file, run out and pause, auto top-up within its limit, resume."""
    account, client, support = await _setup(tmp_path, billing)
    settings = {"topup_package": "pack", "topup_limit": 0, "topup_below": 0}
    await billing.api("PATCH", f"/v1/agents/{client.agent_id}", settings)
    relay = synced_relay(tmp_path, billing)
    await _start(relay, client, support)
    size = 6 * MB
    payload = pattern(size, 21)
    try:
        async with DigestService(half_close=False) as service:
            port = await _tunnel(relay, client, support, service, clients)
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(payload)
            await poll(lambda: _stream_state(relay), "the stream", timeout=20)
            await poll(
                lambda: bool(service.conns) and service.conns[0].received == 4 * MB,
                "the plan's 4 MB to arrive",
            )
            await poll(lambda: _paused(relay), "the stream to pause when the plan ran out")
            assert service.conns[0].received == 4 * MB  # the limit of 0 bought nothing
            await billing.api("PATCH", f"/v1/agents/{client.agent_id}", {"topup_limit": 500})
            writer.write_eof()
            await asyncio.wait_for(service.conns[0].eof.wait(), 30)
            conn = service.conns[0]
            assert (conn.received, conn.digest.hexdigest(), len(service.conns)) == (
                size,
                sha(payload),
                1,
            )
            writer.close()
        ledger = await billing.api("GET", f"/v1/accounts/{account}/ledger?kind=package")
        assert [e["reason"] for e in ledger["entries"]] == ["auto top-up: 1 x pack"]
        await poll(lambda: _billed(billing, account, client, size), "billing to count every byte")
    finally:
        await relay.stop()


async def _paused(relay: Relay) -> bool:
    return await _stream_state(relay) == ["paused"]


async def _waits_for(relay: Relay, reason: str) -> bool:
    """Every live stream is paused for `reason` (`quota`: billing said there is no more)."""
    return {s["pause_reason"] for s in await relay.call("streams")} == {reason}


async def _billed(billing: Billing, account: str, client: AgentSpec, expect: int) -> bool:
    return await billing.usage_total(account, client.agent_id) == expect


async def test_package_bought_through_the_api_resumes_a_paused_stream_by_push(
    tmp_path: Path, billing: Billing, clients: list[Ssh]
) -> None:
    """Without auto top-up the stream stays paused, socket open; a package resumes it at once."""
    _account, client, support = await _setup(tmp_path, billing)
    relay = synced_relay(tmp_path, billing, interval="30s")  # only the push can be this quick
    await _start(relay, client, support)
    payload = pattern(5 * MB, 22)
    try:
        async with DigestService(half_close=False) as service:
            port = await _tunnel(relay, client, support, service, clients)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(payload)
            await poll(lambda: _paused(relay), "the stream to pause", timeout=60)
            await poll(lambda: _waits_for(relay, "quota"), "billing's answer: no more traffic")
            conn = service.conns[0]
            assert conn.received <= 4 * MB and not reader.at_eof()
            loop = asyncio.get_running_loop()
            bought = loop.time()
            await billing.api("POST", f"/v1/agents/{client.agent_id}/packages", {"package": "pack"})
            await poll(lambda: conn.received == len(payload), "the rest after the purchase", 10)
            print(f"purchase to all bytes delivered: {loop.time() - bought:.3f} s")
            # the stream had asked for more than the plan held: the lease came on the push
            assert (await relay.call("status"))["sync"]["leases_pushed"] == 1
            writer.write_eof()
            await asyncio.wait_for(conn.eof.wait(), 20)
            assert conn.digest.hexdigest() == sha(payload) and len(service.conns) == 1
            writer.close()
    finally:
        await relay.stop()


class Pacer:
    """Sends a deterministic stream at a steady pace until told to stop; hashes what it sent."""

    def __init__(self, writer: asyncio.StreamWriter, chunk: int = 32 * 1024) -> None:
        self.writer, self.chunk = writer, chunk
        self.sent = 0
        self.digest = hashlib.sha256()
        self.stop = asyncio.Event()
        self._seed = 0

    async def run(self, tick: float = 0.01) -> None:
        while not self.stop.is_set():
            self._seed += 1
            data = pattern(self.chunk, self._seed)
            self.writer.write(data)
            self.digest.update(data)
            self.sent += len(data)
            await self.writer.drain()
            await asyncio.sleep(tick)  # pacing the sender is the behaviour under test


async def test_billing_down_30s_relay_goes_on_within_its_lease_and_catches_up(
    tmp_path: Path, clients: list[Ssh], database: str
) -> None:
    """With the billing API stopped for 30 s the stream flows on; totals agree to the byte after."""
    billing = Billing(tmp_path, plan_traffic=10**9, package_traffic=MB, database=database)
    await billing.start()
    account, client, support = await _setup(tmp_path, billing)
    relay = synced_relay(tmp_path, billing, min_want="200M")
    await _start(relay, client, support)
    try:
        async with DigestService(half_close=False) as service:
            port = await _tunnel(relay, client, support, service, clients)
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            pacer = Pacer(writer)
            task = asyncio.create_task(pacer.run())
            await poll(lambda: bool(service.conns) and service.conns[0].received > MB, "traffic")
            await billing.stop()
            before = service.conns[0].received
            await asyncio.sleep(30)  # the outage's length is the behaviour under test
            assert service.conns[0].received > before  # it went on within the lease
            await billing.start()
            pacer.stop.set()
            await task
            writer.write_eof()
            await asyncio.wait_for(service.conns[0].eof.wait(), 30)
            conn = service.conns[0]
            assert (conn.received, conn.digest.hexdigest()) == (
                pacer.sent,
                pacer.digest.hexdigest(),
            )
            writer.close()
        await poll(lambda: _billed(billing, account, client, pacer.sent), "billing to catch up", 30)
        rows = await totals(relay.db_path, by="agent")
        assert [r["bytes_total"] for r in rows] == [pacer.sent]
    finally:
        await relay.stop()
        await billing.close()


async def test_relay_sigkill_loses_at_most_one_interval_never_double_counts(
    tmp_path: Path, billing: Billing, clients: list[Ssh]
) -> None:
    """After SIGKILL and restart, billed <= delivered and at least delivered minus one interval."""
    account, client, support = await _setup(tmp_path, billing)
    await billing.api("POST", f"/v1/agents/{client.agent_id}/packages", {"package": "pack"})
    relay = synced_relay(tmp_path, billing, interval="500ms")
    await _start(relay, client, support)
    tick, chunk = 0.01, 16 * 1024  # at most ~1.6 MB/s: one 500 ms interval is under 1 MB
    async with DigestService(half_close=False) as service:
        port = await _tunnel(relay, client, support, service, clients)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        pacer = Pacer(writer, chunk)
        task = asyncio.create_task(pacer.run(tick))
        await poll(lambda: bool(service.conns) and service.conns[0].received > 2 * MB, "2 MB")
        assert await relay.signal(signal.SIGKILL) == -signal.SIGKILL
        pacer.stop.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        delivered = service.conns[0].received
        writer.close()
    await _start(relay, client, support)  # resends what was not acknowledged
    await poll(lambda: _pending_zero(relay), "the journal's outbox to drain")
    billed = await billing.usage_total(account, client.agent_id)
    one_interval = int(chunk / tick * 0.5)
    assert delivered - one_interval * 2 <= billed <= delivered
    reports = await billing.api("GET", f"/v1/accounts/{account}/ledger?agent_id={client.agent_id}")
    entries = reports["entries"]
    agent = await billing.api("GET", f"/v1/agents/{client.agent_id}")
    # the hour's draws wait in its open window: what the ledger's traffic lacks
    open_window = sum(e["traffic_bytes"] for e in entries) - agent["traffic_remaining"]
    assert sum(e["used_bytes"] for e in entries) + open_window == billed
    await relay.stop()


async def _pending_zero(relay: Relay) -> bool:
    status = await relay.call("status")
    sync = status.get("sync", {})
    return sync.get("reports_acked", 0) >= 1 and sync.get("reports_written", 0) == sync.get(
        "reports_acked", 0
    )


async def test_replayed_reordered_duplicated_reports_keep_totals_exact(
    tmp_path: Path, billing: Billing, clients: list[Ssh]
) -> None:
    """A proxy duplicating every report and replaying old ones changes no total."""
    account, client, support = await _setup(tmp_path, billing)
    async with SyncProxy(billing.url, chaos=True) as proxy:
        relay = synced_relay(tmp_path, billing, url=proxy.url)
        await _start(relay, client, support)
        size = 3 * MB
        payload = pattern(size, 23)
        try:
            async with DigestService() as service:
                port = await _tunnel(relay, client, support, service, clients)
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(payload)
                writer.write_eof()
                await poll(lambda: bool(service.conns), "the stream to reach the service")
                await asyncio.wait_for(service.conns[0].eof.wait(), 30)
                assert service.conns[0].digest.hexdigest() == sha(payload)
                writer.close()
            await poll(lambda: _billed(billing, account, client, size), "billing to count it once")
            assert len(proxy.syncs) >= 2
            view = await relay.call("agent", client.agent_id)
            assert view["used"] == size

            async def logged() -> bool:
                rows = await list_streams(relay.db_path)
                return sum(r["bytes_up"] + r["bytes_down"] for r in rows) == size

            await poll(logged, "the stream log to hold the same total")
        finally:
            await relay.stop()


async def test_revoked_key_is_refused_and_its_live_tunnels_close(
    tmp_path: Path, billing: Billing, clients: list[Ssh]
) -> None:
    """Revoking a key in the billing API closes that agent's connection and refuses it after."""
    _, client, support = await _setup(tmp_path, billing)
    relay = synced_relay(tmp_path, billing, registry_refresh="60s")  # only the push can be quick
    await _start(relay, client, support)
    try:
        async with DigestService(half_close=False) as service:
            port = await _tunnel(relay, client, support, service, clients)
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"z" * 1000)
            await poll(lambda: bool(service.conns) and service.conns[0].received == 1000, "bytes")
            agent = await billing.api("GET", f"/v1/agents/{client.agent_id}")
            key_id = agent["keys"][0]["id"]
            await billing.api("DELETE", f"/v1/agents/{client.agent_id}/keys/{key_id}")
            owner = clients[0]
            assert owner.proc is not None
            await asyncio.wait_for(owner.proc.wait(), 20)
            await poll(lambda: service.conns[0].closed.is_set(), "the service side to close")
            writer.close()

            async def revoked() -> bool:
                rows = await list_streams(relay.db_path)
                return [r["close_reason"] for r in rows] == ["revoked"]

            await poll(revoked, "the stream closed as revoked in the stream log")
        again = await Ssh(relay, client, "-N", "-R", "nas:22:127.0.0.1:9", "relay").start()
        code, err = await again.finish()
        assert code == 255 and "Permission denied (publickey)" in err
    finally:
        await relay.stop()


async def test_sigterm_reports_the_last_counts_before_exit(
    tmp_path: Path, billing: Billing, clients: list[Ssh]
) -> None:
    """A relay stopped with SIGTERM reports what it relayed since its last sync: nothing lost."""
    account, client, support = await _setup(tmp_path, billing)
    # no periodic sync and no low-water nudge before the stop: only the final round reports
    relay = synced_relay(tmp_path, billing, interval="30s", min_want="100M")
    await _start(relay, client, support)
    payload = pattern(MB, 24)
    async with DigestService() as service:
        port = await _tunnel(relay, client, support, service, clients)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        writer.write_eof()
        await poll(lambda: bool(service.conns) and service.conns[0].eof.is_set(), "1 MB relayed")
        writer.close()
        assert await relay.signal(signal.SIGTERM) == 0
    assert await billing.usage_total(account, client.agent_id) == MB
