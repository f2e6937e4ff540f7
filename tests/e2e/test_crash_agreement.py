"""After a SIGKILL of the relay, its stream log and the billing API agree to the byte."""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.streamlog.query import list_streams, totals
from tests.rigs.agent import AgentProc, start
from tests.rigs.billing import Billing, synced_relay
from tests.rigs.keys import AgentSpec
from tests.rigs.relay import Relay
from tests.rigs.services import DigestService, pattern
from tests.rigs.ssh import Ssh, expose, local_forward
from tests.rigs.waits import poll
from tests.udp.helpers import UdpService, datagram, peer

MB = 1_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pacer:
    """Writes `chunk` bytes every `tick` seconds until stopped: a transfer that lasts."""

    def __init__(self, writer: asyncio.StreamWriter, chunk: int, tick: float) -> None:
        self.writer, self.chunk, self.tick = writer, chunk, tick
        self.stop = asyncio.Event()

    async def run(self) -> None:
        data = pattern(self.chunk, 5)
        while not self.stop.is_set():
            self.writer.write(data)
            await self.writer.drain()
            await asyncio.sleep(self.tick)  # the pace of the transfer, not a wait for a condition


@pytest.fixture
async def procs() -> AsyncIterator[list[AgentProc]]:
    """Agent processes a test starts, stopped at the end."""
    started: list[AgentProc] = []
    yield started
    for p in started:
        await p.stop()


async def _known(relay: Relay, *agents: AgentSpec) -> bool:
    listed = {a["agent_id"] for a in await relay.call("agents")}
    return all(a.agent_id in listed for a in agents)


def _journaled(relay: Relay) -> int:
    """Streams whose figures the relay's journal holds (read-only, beside the running relay)."""
    uri = f"{(relay.tmp / 'var' / 'journal.db').as_uri()}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        (count,) = db.execute("SELECT count(*) FROM stream_figures").fetchone()
    db.close()
    return int(count)


async def _outbox_empty(relay: Relay) -> bool:
    sync = (await relay.call("status")).get("sync", {})
    written, acked = sync.get("reports_written", 0), sync.get("reports_acked", 0)
    return bool(acked) and written == acked


@pytest.mark.parametrize("workers", [1, 2])
async def test_after_sigkill_each_agents_stream_log_total_equals_its_billed_usage(
    tmp_path: Path, clients: list[Ssh], workers: int
) -> None:
    """Streams done and streams mid-transfer at a SIGKILL: log total == billed, per agent."""
    billing = await Billing(tmp_path, plan_traffic=200 * MB).start()
    account = await billing.account("acme", 10_000)
    nas = await billing.agent(tmp_path, account, "nas", "client")
    web = await billing.agent(tmp_path, account, "web", "client")
    tech = await billing.agent(tmp_path, account, "tech", "support")
    for agent in (nas, web):
        await billing.api("POST", f"/v1/agents/{agent.agent_id}/subscription", {"plan": "small"})
    # a 60 s interim (the default): without the journal's figures the log keeps ~nothing
    relay = synced_relay(tmp_path, billing, interval="300ms")
    relay.extra["stream_log"] = {"interim": "60s", "flush": "200ms"}
    relay.extra["relay"]["workers"] = workers  # with 2: the supervisor journals the figures
    await relay.start()
    try:
        await poll(lambda: _known(relay, nas, web, tech), "the agents from the billing API")
        async with DigestService(half_close=False) as a, DigestService(half_close=False) as b:
            await expose(relay, nas, f"nas:22:127.0.0.1:{a.port}", clients)
            await expose(relay, web, f"web:80:127.0.0.1:{b.port}", clients)
            ports = {name: free_port() for name in ("nas", "web")}
            await local_forward(relay, tech, ports["nas"], "nas:22", clients)
            await local_forward(relay, tech, ports["web"], "web:80", clients)
            for i in range(3):  # short streams that end before the kill
                _, w = await asyncio.open_connection("127.0.0.1", ports["web"])
                w.write(pattern(50_000 + i, i))
                w.write_eof()
                await poll(lambda i=i: len(b.conns) > i and b.conns[i].eof.is_set(), "a short one")
                w.close()
            # closed, counted in a report and committed to the log: the journal lets them go
            await poll(lambda: _journaled(relay) == 0, "the short streams to settle")
            pacers = []
            for name in ("nas", "web", "nas"):
                _, w = await asyncio.open_connection("127.0.0.1", ports[name])
                pacers.append(Pacer(w, 16 * 1024, 0.01))
            tasks = [asyncio.create_task(p.run()) for p in pacers]
            await poll(lambda: sum(c.received for c in a.conns) > 3 * MB, "3 MB through nas")
            assert _journaled(relay) == 3  # the live streams, as the last report counted them
            assert await relay.signal(signal.SIGKILL) == -signal.SIGKILL
            for p, t in zip(pacers, tasks, strict=True):
                p.stop.set()
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for p in pacers:
                p.writer.close()
        await relay.start()  # resends what the killed run did not get acknowledged
        await poll(lambda: _outbox_empty(relay), "the journal's outbox to drain")
        logged = {r["agent_id"]: r["bytes_total"] for r in await totals(relay.db_path, by="agent")}
        billed = {
            agent.agent_id: await billing.usage_total(account, agent.agent_id)
            for agent in (nas, web)
        }
        assert logged == billed
        assert billed[nas.agent_id] > 2 * MB  # the last interval before the kill is lost to both
        rows = await list_streams(relay.db_path)
        assert [r["close_reason"] for r in rows].count("relay_restart") == 3
        assert all(r["state"] == "closed" for r in rows)
    finally:
        await relay.stop()
        await billing.close()


@pytest.mark.parametrize("workers", [1, 2])
async def test_after_sigkill_unanswered_udp_flows_agree_with_billing_too(
    tmp_path: Path, procs: list[AgentProc], workers: int
) -> None:
    """UDP flows never answered (summed per tunnel, not yet written) count after a SIGKILL too."""
    billing = await Billing(tmp_path, plan_traffic=200 * MB).start()
    account = await billing.account("acme", 10_000)
    nas = await billing.agent(tmp_path, account, "nas", "client")
    await billing.api("POST", f"/v1/agents/{nas.agent_id}/subscription", {"plan": "small"})
    relay = synced_relay(tmp_path, billing, interval="300ms")
    relay.extra["stream_log"] = {"interim": "60s", "flush": "200ms"}
    relay.extra["udp"] = {"unanswered_interval": "60s"}
    relay.extra["relay"]["workers"] = workers
    await relay.start()
    try:
        await poll(lambda: _known(relay, nas), "the agent from the billing API")
        async with UdpService(echo=False) as sink:
            quiet = AgentProc(relay, nas, "expose", "--udp", f"0:127.0.0.1:{sink.port}")
            await start(procs, quiet)
            port = (await quiet.wait_for("tunnel_ready"))["port"]
            # A datagram that finds no lease is dropped and asks for none (no stream waits):
            # an operator's grant gives the bucket bytes, and billing is told what passes.
            await relay.call("grant", nas.agent_id, 1 * MB)
            for i in range(60):  # sixty flows nobody answers, one datagram each
                p = await peer(port)
                p.send(datagram(1000 + i, 500))
                p.close()
                await asyncio.sleep(0.01)  # the pace of the flows, not a wait for a condition
            total = sink.received  # what passed; a dropped datagram costs nothing

            async def billed_all() -> bool:
                return await billing.usage_total(account, nas.agent_id) == total

            await poll(billed_all, "billing to be told every byte")
            assert await relay.signal(signal.SIGKILL) == -signal.SIGKILL
        await relay.start()
        await poll(lambda: _outbox_empty(relay), "the journal's outbox to drain")
        [logged] = await totals(relay.db_path, by="agent")
        billed = await billing.usage_total(account, nas.agent_id)
        assert logged["bytes_total"] == billed == total
        rows = await list_streams(relay.db_path)
        unanswered = [r["bytes_up"] for r in rows if r["close_reason"] == "unanswered"]
        assert sum(unanswered) == total == 60 * 500  # all of it was still pending at the kill
    finally:
        await relay.stop()
        await billing.close()


async def test_an_agent_with_udp_tunnels_alone_gets_a_lease_from_its_dropped_datagrams(
    tmp_path: Path, procs: list[AgentProc]
) -> None:
    """No stream can wait on UDP: refused datagrams are the demand that asks billing for a
    lease, so an agent whose only tunnel is UDP gets bytes without any operator grant."""
    billing = await Billing(tmp_path, plan_traffic=200 * MB).start()
    account = await billing.account("acme", 10_000)
    nas = await billing.agent(tmp_path, account, "nas", "client")
    await billing.api("POST", f"/v1/agents/{nas.agent_id}/subscription", {"plan": "small"})
    relay = synced_relay(tmp_path, billing, interval="300ms")
    await relay.start()
    try:
        await poll(lambda: _known(relay, nas), "the agent from the billing API")
        async with UdpService(echo=False) as sink:
            agent = AgentProc(relay, nas, "expose", "--udp", f"0:127.0.0.1:{sink.port}")
            await start(procs, agent)
            port = (await agent.wait_for("tunnel_ready"))["port"]
            p = await peer(port)

            def one_more_passed() -> bool:
                p.send(datagram(1, 500))  # keep offering: a refused datagram is gone
                return sink.received > 0

            await poll(one_more_passed, "a datagram to pass on billing's lease", timeout=20)
            p.close()
            passed = sink.received

            async def billed() -> bool:
                return await billing.usage_total(account, nas.agent_id) >= passed > 0

            await poll(billed, "billing to be told what passed")
    finally:
        await relay.stop()
        await billing.close()
