"""After a SIGKILL of the relay, its stream log and the billing API agree to the byte."""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
from pathlib import Path

from relay.streamlog.query import list_streams, totals
from tests.rigs.billing import Billing, synced_relay
from tests.rigs.keys import AgentSpec
from tests.rigs.relay import Relay
from tests.rigs.services import DigestService, pattern
from tests.rigs.ssh import Ssh, expose, local_forward
from tests.rigs.waits import poll

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


async def test_after_sigkill_each_agents_stream_log_total_equals_its_billed_usage(
    tmp_path: Path, clients: list[Ssh]
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
