"""TCP streams and UDP flows share one record, and every close goes through the state table."""

from __future__ import annotations

import asyncio

from quota.core.stream import PauseReason, StreamState
from quota.core.streams import LegConnected
from relay.config import load_config
from relay.hub.hub import Hub
from relay.hub.stream import Stream
from relay.hub.tunnels import UDP_PUBLIC
from relay.registry import Agent, Registry, Role
from relay.tcp.pump import TcpLeg
from relay.tcp.stream import TcpPair
from relay.udp.flow import UdpFlow

AGENT = Agent(agent_id="agt_a", account="acc", role=Role.CLIENT, keys=frozenset(), active=True)


def _hub() -> Hub:
    return Hub(load_config(None), Registry(None), None)


def _flow(hub: Hub, closed: list[UdpFlow]) -> UdpFlow:
    tunnel = hub.tunnels.add_public(AGENT, 40_000, "", None, kind=UDP_PUBLIC)
    stream = Stream(
        hub,
        stream_id=hub.stream_id("u1"),
        tunnel=tunnel,
        peer_desc="1.2.3.4:5",
        bucket=hub.bucket_for(AGENT),
        datagrams=True,
    )
    flow = UdpFlow(stream, flow_id=1, on_close=closed.append)
    stream.handle(LegConnected(all_connected=True, now_ms=hub.now_ms()))
    return flow


def test_a_udp_flow_is_a_stream_record_with_a_flow_carrier() -> None:
    """A flow opens live, marks drops as a pause, counts bytes, closes once through its Stream."""
    hub, closed = _hub(), []
    flow = _flow(hub, closed)
    stream = hub.live[flow.stream.stream_id]
    assert stream is flow.stream and not isinstance(flow, Stream)
    assert not flow.admit_up(100)  # nothing granted: dropped
    assert (stream.state, stream.bytes_dropped, stream.clock.count) == (StreamState.PAUSED, 100, 1)
    hub.buckets.grant(AGENT, 1_000)
    assert flow.admit_up(60) and flow.admit_down(40)
    assert (stream.state, stream.bytes_up, stream.bytes_down) == (StreamState.OPEN, 60, 40)
    flow.close("idle")
    flow.close("tunnel_closed")
    assert (stream.state, stream.close_reason, closed) == (StreamState.CLOSED, "idle", [flow])
    assert len(hub.live) == 0
    assert hub.live.usage() == {("agt_a", "acc/agt_a/udp_public/public:40000"): 100}
    assert hub.buckets["agt_a"].meters == 0


def test_a_tcp_stream_closed_before_it_opened_leaves_no_trace() -> None:
    """A stream the owner refused closes through the state table, never having been live."""
    hub = _hub()
    tunnel = hub.tunnels.add_endpoint(AGENT, "nas", 22, None)
    stream = Stream(hub, stream_id="s1", tunnel=tunnel, peer_desc="", bucket=hub.bucket_for(AGENT))
    pair = TcpPair(stream)
    pair.bind(TcpLeg(pair, "up"), TcpLeg(pair, "down"))
    stream.close("agent_refused", close_legs=False)
    stream.close("operator")
    assert (stream.state, stream.close_reason) == (StreamState.CLOSED, "agent_refused")
    assert len(hub.live) == 0 and hub.buckets["agt_a"].meters == 0


def test_an_owner_going_inactive_pauses_even_idle_streams() -> None:
    """Owner inactive: an idle open stream pauses for INACTIVE; active again: it reads again."""

    async def run() -> list[tuple[StreamState, frozenset[PauseReason]]]:
        hub = _hub()
        tunnel = hub.tunnels.add_endpoint(AGENT, "nas", 22, None)
        stream = Stream(
            hub, stream_id="s1", tunnel=tunnel, peer_desc="", bucket=hub.bucket_for(AGENT)
        )
        pair = TcpPair(stream)
        pair.bind(TcpLeg(pair, "up"), TcpLeg(pair, "down"))
        pair.up.connected = pair.down.connected = True
        pair.leg_connected(pair.up)
        seen = []
        for active in (False, True):
            hub.activity.set_active(AGENT, active)
            seen.append((stream.state, pair.up.reasons | pair.down.reasons))
        hub.close_all("relay_shutdown")
        return seen

    assert asyncio.run(run()) == [
        (StreamState.PAUSED, frozenset({PauseReason.INACTIVE})),
        (StreamState.OPEN, frozenset()),
    ]
