"""Bad input is refused, logged once per cause, and every other flow carries on."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncssh
import pytest

from quota.core.frames import HEADER, Frame, FrameDecoder, encode
from tests.rigs.agent import AgentProc, start
from tests.rigs.keys import AgentSpec
from tests.rigs.relay import Relay
from tests.rigs.waits import poll
from tests.udp.helpers import Peer, UdpService, datagram, echo_round_trips, peer


class RawSession(asyncssh.SSHTCPSession[bytes]):
    """A hand-driven framed channel: writes whatever the test says, keeps frames it gets."""

    def __init__(self) -> None:
        self.chan: Any = None
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []
        self.opened = asyncio.Event()

    def connection_made(self, chan: Any) -> None:
        self.chan = chan
        self.opened.set()

    def data_received(self, data: bytes, datatype: Any) -> None:
        self.frames += [e for e in self.decoder.feed(data) if isinstance(e, Frame)]


async def raw(relay: Relay, agent: AgentSpec) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1",
        relay.ssh_port,
        username=agent.agent_id,
        client_keys=[str(agent.key_path)],
        known_hosts=None,
        agent_path=None,
    )


def refusals(relay: Relay) -> Counter[str]:
    lines = [json.loads(x) for x in relay.log_text().splitlines() if x.startswith("{")]
    return Counter(x["cause"] for x in lines if x.get("event") == "udp_refused")


@pytest.fixture
async def legit(
    relay: Relay, agents: dict[str, AgentSpec], procs: list[AgentProc]
) -> AsyncIterator[tuple[Peer, UdpService]]:
    """A working flow: a support agent's local port to acme's endpoint dns:53 (an echo)."""
    await relay.call("grant", "nas-agent", 10**8)
    async with UdpService() as echo:
        spec = f"dns:53:127.0.0.1:{echo.port}"
        await start(procs, AgentProc(relay, agents["nas"], "expose", "--udp", spec))
        support = await start(
            procs, AgentProc(relay, agents["tech"], "connect", "--udp", "0:dns:53")
        )
        p = await peer((await support.wait_for("listening"))["port"])
        await echo_round_trips(p, [datagram(i, 500) for i in range(20)])
        yield p, echo
        p.close()


async def test_malformed_oversized_and_truncated_frames_from_a_support_agent(
    relay: Relay, agents: dict[str, AgentSpec], legit: tuple[Peer, UdpService]
) -> None:
    """Flow 0, a frame above udp.max_datagram and a cut frame: refused once each; all goes on."""
    p, echo = legit
    conn = await raw(relay, agents["tech"])
    async with conn:
        _, s = await conn.create_connection(RawSession, "udp/dns", 53)
        for _ in range(20):
            s.chan.write(HEADER.pack(3, 0) + b"abc")
        for _ in range(3):
            s.chan.write(encode(5, bytes(9001)))
        s.chan.write(encode(7, b"still here"))
        await poll(lambda: s.frames == [Frame(flow_id=7, payload=b"still here")], "the echo")
        await echo_round_trips(p, [datagram(100 + i, 700) for i in range(20)])
        s.chan.write(encode(7, b"cut")[:-1])
        s.chan.write_eof()
        await poll(lambda: refusals(relay)["truncated"] == 1, "the truncated frame refused")
    assert refusals(relay) == Counter(malformed=1, oversized=1, truncated=1)
    await echo_round_trips(p, [datagram(200 + i, 900) for i in range(20)])
    (own,) = await relay.call("streams")  # the hand-driven flows closed with their channel
    total = 20 * (500 + 700 + 900)
    assert (own["bytes_up"], own["bytes_down"], own["bytes_dropped"]) == (total, total, 0)
    assert echo.received == total + len(b"still here")


async def test_unknown_and_other_accounts_flows_from_an_owner_are_refused(
    relay: Relay, agents: dict[str, AgentSpec], legit: tuple[Peer, UdpService]
) -> None:
    """An owner naming a flow it was never given, or another account's: refused, nothing sent."""
    p, echo = legit
    await relay.call("grant", "gx-agent", 10**6)
    owner = RawSession()
    gx = await raw(relay, agents["gx"])
    gxtech = await raw(relay, agents["gxtech"])
    async with gx, gxtech:
        await gx.create_server(lambda host, port: owner, "udp/gxdns", 53)
        _, support = await gxtech.create_connection(RawSession, "udp/gxdns", 53)
        support.chan.write(encode(1, b"ping"))
        await poll(lambda: bool(owner.frames), "the relay's channel to the owner")
        (frame,) = owner.frames
        assert frame.payload == b"ping"
        streams = await relay.call("streams")
        acme_flows = [s for s in streams if s["agent_id"] == "nas-agent"]
        (gx_flow,) = [s for s in streams if s["agent_id"] == "gx-agent"]
        for fid in range(1, 40):
            if fid != frame.flow_id:
                owner.chan.write(encode(fid, b"evil"))
        owner.chan.write(encode(frame.flow_id, b"pong"))
        await poll(lambda: support.frames == [Frame(flow_id=1, payload=b"pong")], "the reply")
        await echo_round_trips(p, [datagram(300 + i, 600) for i in range(20)])
    assert len(acme_flows) == 1
    # another worker's flows are not known in this one: there, every id is unknown
    same_worker = acme_flows[0].get("worker") == gx_flow.get("worker")
    other = Counter(other_account=1) if same_worker else Counter()
    assert refusals(relay) == other + Counter(unknown_flow=1)
    (acme,) = [s for s in await relay.call("streams") if s["agent_id"] == "nas-agent"]
    assert acme["bytes_down"] == 20 * (500 + 600) == echo.received


async def test_oversized_datagrams_on_a_public_port_are_dropped_and_counted(
    relay: Relay, agents: dict[str, AgentSpec], procs: list[AgentProc]
) -> None:
    """Datagrams above udp.max_datagram are dropped, counted as dropped, never as used."""
    await relay.call("grant", "nas-agent", 10**8)
    async with UdpService() as echo:
        agent = AgentProc(relay, agents["nas"], "expose", "--udp", f"0:127.0.0.1:{echo.port}")
        await start(procs, agent)
        p = await peer((await agent.wait_for("tunnel_ready"))["port"])
        for _ in range(3):
            p.send(bytes(9001))
        await echo_round_trips(p, [datagram(i, 9000) for i in range(10)])
        p.close()
    (flow,) = await relay.call("streams")
    assert (flow["bytes_up"], flow["bytes_down"], flow["bytes_dropped"]) == (90000, 90000, 27003)
    assert (await relay.call("agent", "nas-agent"))["used"] == 180000
    assert refusals(relay) == Counter(oversized=1)
