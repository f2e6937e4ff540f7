"""A relay of two worker processes: one grant, one stream log, one admin API; a lost worker."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.rigs.agent import AgentProc, start
from tests.rigs.flood import Flood
from tests.rigs.keys import AgentSpec, make_agent
from tests.rigs.metrics import scrape, value
from tests.rigs.procs import free_port
from tests.rigs.relay import Relay
from tests.rigs.services import DigestService, exchange, pattern, sha
from tests.rigs.ssh import Ssh, expose, local_forward
from tests.rigs.waits import poll
from tests.udp.helpers import UdpService, datagram, echo_round_trips, peer

MiB = 1024 * 1024
WORKERS = 2


@pytest.fixture
def agents(tmp_path: Path) -> dict[str, AgentSpec]:
    web = make_agent(tmp_path, "web-agent", "acme", "client")
    web.limits = {"ssh_connections_per_agent": 64, "public_ports_per_agent": 64}
    tech = make_agent(tmp_path, "tech", "acme", "support")
    tech.limits = {"ssh_connections_per_agent": 64}
    return {"web": web, "nas": make_agent(tmp_path, "nas-agent", "acme", "client"), "tech": tech}


@pytest.fixture
async def relay(tmp_path: Path, agents: dict[str, AgentSpec]) -> AsyncIterator[Relay]:
    r = Relay(tmp_path, list(agents.values()), extra={"relay": {"workers": WORKERS}})
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def clients() -> AsyncIterator[list[Ssh]]:
    started: list[Ssh] = []
    yield started
    for c in started:
        await c.stop()


async def _workers(relay: Relay) -> list[dict[str, int]]:
    workers: list[dict[str, int]] = (await relay.call("status"))["workers"]
    return workers


async def _public_port(relay: Relay, agent: AgentSpec, target: int, clients: list[Ssh]) -> int:
    ssh = Ssh(relay, agent, "-N", "-R", f"0:127.0.0.1:{target}", "relay")
    clients.append(ssh)
    await ssh.start()
    line = await ssh.wait_for_line("Allocated port")
    match = re.search(r"Allocated port (\d+)", line)
    assert match, line
    return int(match.group(1))


async def _spread(relay: Relay, agent: AgentSpec, target: int, clients: list[Ssh]) -> list[int]:
    """Public ports of `agent` until every worker holds at least one (SO_REUSEPORT spreads them)."""
    ports: list[int] = []
    for _ in range(24):
        ports.append(await _public_port(relay, agent, target, clients))

        async def counted(n: int = len(ports)) -> bool:
            return sum(w["tunnels"] for w in await _workers(relay)) == n

        await poll(counted, "every tunnel reported by its worker")
        workers = await _workers(relay)
        if len(workers) == WORKERS and all(w["tunnels"] for w in workers):
            return ports
    raise AssertionError("24 connections all landed on one worker")


async def _push(port: int, data: bytes) -> asyncio.StreamWriter:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    return writer


def _rows(db: Path) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(db) as conn:
        query = "SELECT stream_id, state, close_reason FROM streams ORDER BY stream_id"
        return list(conn.execute(query))


async def test_one_grant_spread_over_every_worker_passes_exactly(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """Streams of one agent on both workers pass the grant to the byte, not one byte more."""
    grant = 3 * MiB + 12_345
    async with DigestService() as service:
        ports = await _spread(relay, agents["web"], service.port, clients)
        writers = [await _push(port, pattern(2 * MiB, i)) for i, port in enumerate(ports)]
        await poll(lambda: len(service.conns) == len(ports), "every stream at the service")
        await relay.call("grant", "web-agent", grant)

        def received() -> int:
            return sum(c.received for c in service.conns)

        await poll(lambda: received() >= grant, "the whole grant relayed", timeout=60)

        async def reported() -> bool:
            return bool((await relay.call("agent", "web-agent"))["used"] == grant)

        await poll(reported, "every worker's use reported")
        assert received() == grant
        streams = await relay.call("streams")
        assert {s["worker"] for s in streams} == set(range(WORKERS))
        for writer in writers:
            writer.close()


async def test_a_killed_worker_is_restarted_and_the_others_carry_on(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """SIGKILL one worker: its streams are logged `worker_lost`, it comes back, the rest flow."""
    await relay.call("grant", "web-agent", 1 << 40)
    async with DigestService() as service:
        ports = await _spread(relay, agents["web"], service.port, clients)
        writers = [await _push(port, b"x" * 1000) for port in ports]
        await poll(lambda: sum(c.received for c in service.conns) == 1000 * len(ports), "bytes")

        async def logged() -> bool:
            return len(await relay.call("streams")) == len(ports)

        await poll(logged, "every stream in the relay's view")
        streams = await relay.call("streams")
        workers = await _workers(relay)
        victim = workers[0]
        os.kill(victim["pid"], signal.SIGKILL)

        async def restarted() -> bool:
            now = await _workers(relay)
            return len(now) == WORKERS and victim["pid"] not in {w["pid"] for w in now}

        await poll(restarted, "the worker started again")
        # the first workers were forked before the relay's loop began (no command line of
        # their own); the one started again is a new `python -m relay.workers.worker`
        assert relay.proc is not None
        assert not Path(f"/proc/{victim['pid']}").exists()  # reaped, not left a zombie
        again = [w for w in await _workers(relay) if w["worker"] == victim["worker"]]
        assert "relay.workers.worker" in _cmdline(again[0]["pid"])
        others = [w for w in workers if w["worker"] != victim["worker"]]
        assert others and all(_cmdline(w["pid"]) == _cmdline(relay.proc.pid) for w in others)
        lost = {s["stream_id"] for s in streams if s["worker"] == victim["worker"]}
        kept = [
            (writer, s)
            for writer, s in zip(writers, sorted(streams, key=_port_order(ports)), strict=True)
            if s["worker"] != victim["worker"]
        ]
        assert lost and kept
        await poll(
            lambda: {r[0] for r in _rows(relay.db_path) if r[2] == "worker_lost"} == lost,
            "the lost worker's streams logged closed",
        )
        before = sum(c.received for c in service.conns)
        more = pattern(100_000, 7)
        for writer, _ in kept:
            writer.write(more)
        expect = before + len(more) * len(kept)
        await poll(lambda: sum(c.received for c in service.conns) == expect, "the others flow")
    for writer in writers:
        writer.close()


def _cmdline(pid: int) -> list[str]:
    """A process's command line ([] once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except FileNotFoundError:
        return []


def _port_order(ports: list[int]) -> Callable[[dict[str, Any]], int]:
    """Sort streams as their public ports were opened (a public stream's target ends in it)."""
    order = {port: i for i, port in enumerate(ports)}
    return lambda s: order[int(str(s["target"]).rsplit(":", 1)[1])]


async def test_sigterm_drains_every_worker(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """SIGTERM: each worker closes its streams as relay_shutdown and exits; the relay returns 0."""
    await relay.call("grant", "web-agent", 1 << 40)
    async with DigestService(send=pattern(50_000, 3)) as service:
        ports = await _spread(relay, agents["web"], service.port, clients)
        writers = [await _push(port, b"hello") for port in ports]

        async def logged() -> bool:
            return len(await relay.call("streams")) == len(ports)

        await poll(logged, "every stream in the relay's view")
        pids = [w["pid"] for w in await _workers(relay)]
        assert await relay.signal(signal.SIGTERM) == 0
    rows = _rows(relay.db_path)
    assert len(rows) == len(ports)
    assert {(state, reason) for _, state, reason in rows} == {("closed", "relay_shutdown")}
    assert len({r[0].split("-")[-1].split(".")[0] for r in rows}) == WORKERS  # w0., w1.
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    for writer in writers:
        writer.close()


async def _connections(relay: Relay) -> list[int]:
    return [w["connections"] for w in await _workers(relay)]


async def test_support_agent_reaches_an_endpoint_held_by_another_worker(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """-L from one worker to an endpoint whose agent is on the other: byte-exact, metered once."""
    size = 3 * MiB
    down, up = pattern(size, 21), pattern(size, 22)
    async with DigestService(send=down) as service:
        await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{service.port}", clients)
        await poll(lambda: _sum_tunnels(relay, 1), "the endpoint reported")
        owner = next(w["worker"] for w in await _workers(relay) if w["tunnels"])
        for _ in range(24):  # until a support connection lands on the other worker
            before = await _connections(relay)
            port = free_port()
            await local_forward(relay, agents["tech"], port, "nas:22", clients)

            async def counted(n: int = sum(before) + 1) -> bool:
                return sum(await _connections(relay)) == n

            await poll(counted, "the support connection reported")
            after = await _connections(relay)
            if after[1 - owner] > before[1 - owner]:
                break
        else:
            raise AssertionError("24 support connections all landed on the owner's worker")
        await relay.call("grant", "nas-agent", 2 * size)
        digest, got = await exchange(port, up, size)
        assert (digest, got) == (sha(down), size)
        await asyncio.wait_for(service.conns[-1].eof.wait(), 30)
        assert service.conns[-1].digest.hexdigest() == sha(up)

    async def used() -> bool:
        return bool((await relay.call("agent", "nas-agent"))["used"] == 2 * size)

    await poll(used, "both directions metered once")
    await poll(lambda: len(_rows(relay.db_path)) == 1, "one stream in the log")


async def _sum_tunnels(relay: Relay, n: int) -> bool:
    return sum(w["tunnels"] for w in await _workers(relay)) == n


async def test_a_udp_endpoint_held_by_another_worker_is_reached(
    relay: Relay, agents: dict[str, AgentSpec]
) -> None:
    """A UDP endpoint's framed channel crosses workers: datagrams intact, metered once."""
    procs: list[AgentProc] = []
    try:
        await relay.call("grant", "nas-agent", 10**9)
        async with UdpService() as echo:
            spec = f"dns:53:127.0.0.1:{echo.port}"
            await start(procs, AgentProc(relay, agents["nas"], "expose", "--udp", spec))
            await poll(lambda: _sum_tunnels(relay, 1), "the UDP endpoint reported")
            owner = next(w["worker"] for w in await _workers(relay) if w["tunnels"])
            for _ in range(24):
                before = await _connections(relay)
                support = AgentProc(relay, agents["tech"], "connect", "--udp", "0:dns:53")
                await start(procs, support)
                port = (await support.wait_for("listening"))["port"]

                async def counted(n: int = sum(before) + 1) -> bool:
                    return sum(await _connections(relay)) == n

                await poll(counted, "the support connection reported")
                if (await _connections(relay))[1 - owner] > before[1 - owner]:
                    break
            else:
                raise AssertionError("24 support connections all landed on the owner's worker")
            payloads = [datagram(i, 100 + i) for i in range(200)]
            p = await peer(port)
            await echo_round_trips(p, payloads)
            p.close()
        total = sum(map(len, payloads))
        assert echo.received == total

        async def used() -> bool:
            return bool((await relay.call("agent", "nas-agent"))["used"] == 2 * total)

        await poll(used, "both directions metered once")
    finally:
        for proc in procs:
            await proc.stop()


async def test_a_revoke_takes_back_what_the_workers_hold(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """Revoking everything takes the pool at once and the workers' headroom on a recall."""
    await relay.call("grant", "web-agent", 10 * MiB)
    async with DigestService() as service:
        ports = await _spread(relay, agents["web"], service.port, clients)
        await relay.call("revoke", "web-agent", 10 * MiB)

        async def all_back() -> bool:
            view = await relay.call("agent", "web-agent")
            return bool(view["granted"] == 0 and view["remaining"] == 0)

        await poll(all_back, "every byte back from the workers")
        writer = await _push(ports[0], b"x" * 1000)

        async def paused() -> bool:
            return [s["state"] for s in await relay.call("streams")] == ["paused"]

        await poll(paused, "the stream paused with nothing granted")
        assert sum(c.received for c in service.conns) == 0
        writer.close()


async def test_pre_login_limits_count_the_relay_not_a_worker(relay: Relay) -> None:
    """40 silent connections from one address: 10 held by the relay as a whole, 30 dropped."""
    with Flood() as flood:
        flood.open(relay.ssh_port, 40)

        async def settled() -> bool:
            held = (await relay.call("status"))["connections"]
            return bool(held["unauthenticated"] + sum(held["refused"].values()) >= 40)

        await poll(settled, "40 connections held or dropped")
        held = (await relay.call("status"))["connections"]
        assert held["unauthenticated"] == 10
        assert held["refused"] == {"per_source_startups": 30}
        await poll(lambda: flood.still_open() == 10, "the relay to close the dropped ones")
        workers = await _workers(relay)
        assert sum(w["connections"] for w in workers) == 10
        assert all(w["connections"] for w in workers)  # passed to both workers


async def _log_in(relay: Relay, agent: AgentSpec) -> Any:
    return await asyncssh.connect(
        "127.0.0.1",
        relay.ssh_port,
        username=agent.agent_id,
        client_keys=[str(agent.key_path)],
        known_hosts=None,
        agent_path=None,
    )


async def test_an_agents_ssh_connections_count_the_relay(
    relay: Relay, agents: dict[str, AgentSpec]
) -> None:
    """20 logins of nas-agent passed over both workers: 16 stay, 4 are told why and ended."""
    conns = [await _log_in(relay, agents["nas"]) for _ in range(20)]
    await poll(lambda: sum(c.is_closed() for c in conns) == 4, "the relay to end 4 logins")
    assert all(w["connections"] for w in await _workers(relay))  # on both workers
    await relay.stop()
    with sqlite3.connect(relay.db_path) as db:
        rows = db.execute("SELECT close_reason FROM stream_events WHERE event = 'refused'")
        assert [r[0] for r in rows] == ["too_many_ssh_connections"] * 4
    for conn in conns:
        conn.close()


async def test_an_agents_public_ports_count_the_relay(
    relay: Relay, agents: dict[str, AgentSpec]
) -> None:
    """One `-R 0` on each of 12 connections of nas-agent, over both workers: 8 ports given."""
    conns = [await _log_in(relay, agents["nas"]) for _ in range(12)]
    ports = []
    for conn in conns:
        try:
            listener = await conn.forward_remote_port("", 0, "127.0.0.1", 9)
            ports.append(listener.get_port())
        except asyncssh.ChannelListenError:
            pass
    assert len(ports) == 8
    assert (await relay.call("status"))["tunnels"] == 8
    assert all(w["tunnels"] for w in await _workers(relay))  # on both workers
    for conn in conns:
        conn.close()


async def test_an_operators_pause_answers_with_the_stream_paused(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """POST pause on a stream in a worker: the answer already shows it paused, then resumed."""
    await relay.call("grant", "web-agent", 10 * MiB)
    async with DigestService() as service:
        port = await _public_port(relay, agents["web"], service.port, clients)
        writer = await _push(port, b"x" * 1000)
        await poll(lambda: len(service.conns) == 1, "the stream at the service")
        [stream] = await relay.call("streams")
        paused = await relay.call("pause_stream", stream["stream_id"], True)
        assert (paused["state"], paused["pause_reason"]) == ("paused", "operator")
        resumed = await relay.call("pause_stream", stream["stream_id"], False)
        assert resumed["state"] != "paused"
        writer.close()


def _rss(pid: int) -> int:
    """A process's resident bytes, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def test_metrics_process_figures_count_every_worker(
    tmp_path: Path, agents: dict[str, AgentSpec]
) -> None:
    """/metrics' process memory and descriptors are the supervisor's plus each worker's."""
    extra = {"relay": {"workers": WORKERS}, "metrics": {"listen": "127.0.0.1:0"}}
    relay = Relay(tmp_path, list(agents.values()), extra=extra)
    await relay.start()
    try:
        assert relay.proc is not None
        pids = [w["pid"] for w in await _workers(relay)]
        assert len(pids) == WORKERS
        samples = await scrape(relay.ready["metrics"])
        rss = value(samples, "process_resident_memory_bytes")
        fds = value(samples, "process_open_fds")
        assert rss is not None and fds is not None
        # each worker holds tens of MB and a dozen descriptors: the supervisor alone is less
        alone = _rss(relay.proc.pid)
        assert rss > alone + min(_rss(p) for p in pids) * (WORKERS - 1)
        assert fds > len(list(Path(f"/proc/{relay.proc.pid}/fd").iterdir())) + WORKERS
    finally:
        await relay.stop()
