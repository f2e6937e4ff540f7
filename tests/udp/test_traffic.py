"""UDP through an endpoint and a public port: content, exact counts, many flows."""

from __future__ import annotations

import asyncio
import random

import pytest

from relay.streamlog.query import list_streams
from tests.rigs.agent import AgentProc, start
from tests.rigs.keys import AgentSpec
from tests.rigs.relay import Relay
from tests.rigs.waits import poll
from tests.udp.helpers import Peer, UdpService, datagram, echo_round_trips, peer

COUNT = 10_000


def mixed_sizes(n: int, seed: int) -> list[int]:
    rnd = random.Random(seed)
    return [
        rnd.choice((rnd.randint(4, 64), rnd.randint(65, 1400), rnd.randint(1401, 9000)))
        for _ in range(n)
    ]


async def test_10k_datagrams_through_an_endpoint(
    relay: Relay, agents: dict[str, AgentSpec], procs: list[AgentProc]
) -> None:
    """10,000 mixed datagrams reach a UDP endpoint and come back intact; used is exact."""
    await relay.call("grant", "nas-agent", 10**9)
    async with UdpService() as echo:
        await start(
            procs,
            AgentProc(relay, agents["nas"], "expose", "--udp", f"dns:53:127.0.0.1:{echo.port}"),
        )
        support = await start(
            procs, AgentProc(relay, agents["tech"], "connect", "--udp", "0:dns:53")
        )
        port = (await support.wait_for("listening"))["port"]
        payloads = [datagram(i, n) for i, n in enumerate(mixed_sizes(COUNT, 1))]
        p = await peer(port)
        await echo_round_trips(p, payloads)
        p.close()
    total = sum(map(len, payloads))
    assert echo.received == total
    view = await relay.call("agent", "nas-agent")
    assert view["used"] == 2 * total
    streams = await relay.call("streams")
    assert [(s["kind"], s["bytes_up"], s["bytes_down"]) for s in streams] == [
        ("udp_endpoint", total, total)
    ]


async def test_10k_datagrams_through_a_public_port(
    relay: Relay, agents: dict[str, AgentSpec], procs: list[AgentProc]
) -> None:
    """10,000 mixed datagrams through a public UDP port come back intact; used is exact."""
    await relay.call("grant", "nas-agent", 10**9)
    async with UdpService() as echo:
        agent = AgentProc(relay, agents["nas"], "expose", "--udp", f"0:127.0.0.1:{echo.port}")
        await start(procs, agent)
        ready = await agent.wait_for("tunnel_ready")
        assert ready["kind"] == "udp_public"
        assert relay.ports[0] <= ready["port"] <= relay.ports[1]
        payloads = [datagram(i, n) for i, n in enumerate(mixed_sizes(COUNT, 2))]
        p = await peer(ready["port"])
        await echo_round_trips(p, payloads)
        p.close()
    total = sum(map(len, payloads))
    assert echo.received == total
    assert (await relay.call("agent", "nas-agent"))["used"] == 2 * total
    streams = await relay.call("streams")
    assert [(s["kind"], s["bytes_up"], s["bytes_down"], s["bytes_dropped"]) for s in streams] == [
        ("udp_public", total, total, 0)
    ]
    assert streams[0]["tunnel_id"] == f"acme/nas-agent/udp_public/public:{ready['port']}"


async def test_100_concurrent_flows_are_100_streams_with_their_own_totals(
    relay: Relay, agents: dict[str, AgentSpec], procs: list[AgentProc]
) -> None:
    """100 source ports through one endpoint are 100 streams, each with its own exact totals."""
    await relay.call("grant", "nas-agent", 10**9)
    async with UdpService() as echo:
        spec = f"dns:53:127.0.0.1:{echo.port}"
        await start(procs, AgentProc(relay, agents["nas"], "expose", "--udp", spec))
        support = await start(
            procs, AgentProc(relay, agents["tech"], "connect", "--udp", "0:dns:53")
        )
        port = (await support.wait_for("listening"))["port"]
        peers = [await peer(port) for _ in range(100)]
        sends = [[datagram(i * 100 + j, 10 + i * 13 + j) for j in range(5)] for i in range(100)]
        gate = asyncio.Semaphore(20)  # all 100 flows live at once; bursts stay bounded

        async def one(p: Peer, d: bytes) -> None:
            async with gate:
                await echo_round_trips(p, [d], window=1)

        for j in range(5):
            await asyncio.gather(*(one(p, d[j]) for p, d in zip(peers, sends, strict=True)))
        for p in peers:
            p.close()
    assert len(echo.peers) == 100
    want = sorted((sum(map(len, d)),) * 2 for d in sends)
    streams = await relay.call("streams")
    assert len({s["stream_id"] for s in streams}) == 100
    assert sorted((s["bytes_up"], s["bytes_down"]) for s in streams) == want

    async def logged() -> bool:
        rows = await list_streams(relay.db_path, agent="nas-agent")
        return sorted((r["bytes_up"], r["bytes_down"]) for r in rows) == want

    await poll(logged, "100 flows in the stream log with their totals")
    total = sum(up + down for up, down in want)
    assert (await relay.call("agent", "nas-agent"))["used"] == total


@pytest.mark.parametrize("relay", [1, 2], indirect=True, ids=["workers1", "workers2"])
async def test_a_small_grant_drops_the_rest_and_a_grant_resumes_at_once(
    relay: Relay, agents: dict[str, AgentSpec], procs: list[AgentProc]
) -> None:
    """Delivered bytes never exceed the grant; the rest is dropped and counted; a grant resumes.

    The service never answers, so the flow is logged in its tunnel's `unanswered` record.
    """
    grant = 10_500
    sizes = [random.Random(i).randint(100, 1500) for i in range(40)]
    async with UdpService(echo=False) as sink:
        agent = AgentProc(relay, agents["nas"], "expose", "--udp", f"0:127.0.0.1:{sink.port}")
        await start(procs, agent)
        port = (await agent.wait_for("tunnel_ready"))["port"]
        await relay.call("grant", "nas-agent", grant)
        p = await peer(port)
        for i, n in enumerate(sizes):
            p.send(datagram(i, n))
        passed, left = [], grant
        for n in sizes:
            if n <= left:
                passed.append(n)
                left -= n

        async def accounted() -> bool:
            streams = await relay.call("streams")
            return bool(streams) and streams[0]["bytes_up"] + streams[0]["bytes_dropped"] == sum(
                sizes
            )

        await poll(accounted, "every datagram passed or dropped")
        await poll(lambda: sink.received == sum(passed), "the passed datagrams at the service")
        (flow,) = await relay.call("streams")
        assert (flow["bytes_up"], flow["bytes_dropped"]) == (sum(passed), sum(sizes) - sum(passed))
        assert flow["state"] == "paused" and sink.received <= grant
        view = await relay.call("agent", "nas-agent")
        assert view["used"] == sum(passed) == sink.received

        await relay.call("grant", "nas-agent", 5000)
        p.send(datagram(99, 4000))
        await poll(lambda: sink.received == sum(passed) + 4000, "a datagram after the grant")
        (again,) = await relay.call("streams")
        assert (again["stream_id"], again["state"]) == (flow["stream_id"], "open")
        assert again["bytes_dropped"] == flow["bytes_dropped"]
        assert (await relay.call("agent", "nas-agent"))["used"] == sink.received
        p.close()
        await agent.stop()  # the tunnel ends: its unanswered record is written

    async def logged() -> bool:
        rows = await list_streams(relay.db_path, agent="nas-agent")
        return [(r["last_event"], r["peer"], r["bytes_up"], r["bytes_dropped"]) for r in rows] == [
            ("unanswered", "unanswered flows: 1", sink.received, flow["bytes_dropped"])
        ]

    await poll(logged, "one unanswered record in the log, with the flow's bytes")
