"""UDP floods: a full flow table pushes out the idlest flow, and floods are summed in the log.

A public UDP port of a client agent is flooded from 127.0.0.2 with one-byte
datagrams, each from its own source port, as a spoofing attacker would. The
service behind it answers only real requests (more than one byte), as a DNS
server ignores garbage, so the flood's flows are never answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.shares_rig import events, figures, rows, unanswered
from tests.rigs.agent import AgentProc, start
from tests.rigs.keys import AgentSpec, make_agent
from tests.rigs.relay import Relay
from tests.rigs.waits import poll
from tests.udp.helpers import Peer, UdpService, datagram, echo_round_trips, peer

FLOOD = 4100
ATTACKER = "127.0.0.2"
RSS_GROWTH_KIB = 32 * 1024


class RequestsOnly(UdpService):
    """Echoes datagrams longer than one byte; counts the one-byte ones it ignores."""

    def __init__(self) -> None:
        super().__init__(echo=True)
        self.ignored = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) > 1:
            super().datagram_received(data, addr)
        else:
            self.ignored += 1


@pytest.fixture
def agents(tmp_path: Path) -> dict[str, AgentSpec]:
    return {"nas": make_agent(tmp_path, "nas-agent", "acme", "client")}


@pytest.fixture
async def relay(tmp_path: Path, agents: dict[str, AgentSpec]) -> AsyncIterator[Relay]:
    extra = {"udp": {"unanswered_interval": "1s", "idle_timeout": "2s"}}
    r = Relay(tmp_path, list(agents.values()), extra=extra)
    await r.start()
    yield r
    await r.stop()


@contextlib.asynccontextmanager
async def public_udp(relay: Relay, agent: AgentSpec) -> AsyncIterator[tuple[int, RequestsOnly]]:
    """The agent's public UDP port in front of a RequestsOnly service, its channel open."""
    await relay.call("grant", agent.agent_id, 10**8)
    procs: list[AgentProc] = []
    service = RequestsOnly()
    try:
        async with service:
            spec = f"0:127.0.0.1:{service.port}"
            proc = await start(procs, AgentProc(relay, agent, "expose", "--udp", spec))
            port = (await proc.wait_for("tunnel_ready"))["port"]
            first = await peer(port)
            await echo_round_trips(first, [datagram(0, 100)])  # the owner channel is open
            first.close()
            yield port, service
    finally:
        for p in procs:
            await p.stop()


@pytest.fixture
async def exposed(
    relay: Relay, agents: dict[str, AgentSpec]
) -> AsyncIterator[tuple[int, RequestsOnly]]:
    async with public_udp(relay, agents["nas"]) as got:
        yield got


async def flood(port: int, count: int) -> None:
    """`count` one-byte datagrams to 127.0.0.1:port, each from a new source port of ATTACKER."""
    for first in range(0, count, 100):
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(100)]
        try:
            for s in socks[: count - first]:
                s.bind((ATTACKER, 0))
                s.sendto(b"x", ("127.0.0.1", port))
        finally:
            for s in socks:
                s.close()
        await asyncio.sleep(0)  # let the relay and the agent read between bursts


async def peer_from(host: str, port: int) -> Peer:
    loop = asyncio.get_running_loop()
    _, p = await loop.create_datagram_endpoint(
        Peer, local_addr=(host, 0), remote_addr=("127.0.0.1", port)
    )
    return p


async def live_from(relay: Relay, host: str) -> int:
    streams = await relay.call("streams")
    return sum(str(s["peer"]).startswith(f"{host}:") for s in streams)


async def test_4100_one_byte_datagrams_do_not_lock_a_public_udp_port(
    relay: Relay, exposed: tuple[int, RequestsOnly]
) -> None:
    """After 4,100 one-datagram flows, new peers (other source or the same) get answers at once."""
    port, service = exposed
    base = figures(relay)
    await flood(port, FLOOD)
    await poll(lambda: service.ignored == FLOOD, "every flood datagram at the service")
    assert await live_from(relay, ATTACKER) == 64  # its source's share; the rest pushed out
    legit = await peer(port)
    await echo_round_trips(legit, [datagram(i, 300) for i in range(1, 51)])
    same_source = await peer_from(ATTACKER, port)
    await echo_round_trips(same_source, [datagram(i, 300) for i in range(51, 101)])
    attacked = figures(relay)
    legit.close()
    same_source.close()
    assert attacked.fds - base.fds <= 10, (base, attacked)  # a UDP flow holds no descriptor
    assert attacked.rss_kib - base.rss_kib <= RSS_GROWTH_KIB, (base, attacked)


async def test_a_table_full_of_flows_pushes_out_the_idlest_for_a_new_peer(
    tmp_path: Path, agents: dict[str, AgentSpec]
) -> None:
    """With every source under its share, a full tunnel still takes a new peer: the idlest goes."""
    extra = {"shares": {"streams_per_tunnel": 100, "udp_flows_per_source": 100}}
    relay = Relay(tmp_path, list(agents.values()), extra=extra)
    await relay.start()
    try:
        async with public_udp(relay, agents["nas"]) as (port, service):
            await flood(port, 500)
            await poll(lambda: service.ignored == 500, "every flood datagram at the service")
            assert await live_from(relay, ATTACKER) == 100
            legit = await peer(port)
            await echo_round_trips(legit, [datagram(i, 300) for i in range(1, 21)])
            legit.close()
            assert await live_from(relay, ATTACKER) == 99  # the idlest flood flow made room
    finally:
        await relay.stop()


async def test_a_flood_of_unanswered_flows_is_summed_not_logged_a_row_a_datagram(
    relay: Relay, exposed: tuple[int, RequestsOnly]
) -> None:
    """4,100 unanswered flows make a few `unanswered` rows, bytes exact; answered ones log alone."""
    port, service = exposed
    before = events(relay)
    for _ in range(4):  # a second of flooding, in paced bursts
        await flood(port, FLOOD // 4)
        await asyncio.sleep(0.25)
    await poll(lambda: service.ignored == FLOOD, "every flood datagram at the service")
    legit = await peer(port)
    await echo_round_trips(legit, [datagram(i, 300) for i in range(1, 11)])

    def summed() -> int:
        return sum(up for _, up in unanswered(relay))

    # one byte a datagram, passed and charged; the kernel may reuse a closed socket's
    # port while its flow still lives, so a few flows carry two datagrams
    await poll(lambda: summed() == FLOOD, "every flood byte in an unanswered record", 30)
    records = unanswered(relay)
    assert 1 <= len(records) <= 10, records
    assert FLOOD - 100 <= sum(flows for flows, _ in records) <= FLOOD
    assert events(relay) - before <= 20  # not a row a datagram
    legit.close()
    await poll(lambda: rows(relay, "peer LIKE '127.0.0.1:%' AND state = 'closed'") == 2, "idle")
    assert unanswered(relay) == records  # the answered flows were logged on their own
