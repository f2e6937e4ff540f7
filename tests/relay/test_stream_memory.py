"""An idle TCP stream's own Python objects stay small: slotted legs, pair and record, no sets."""

from __future__ import annotations

import gc
import tracemalloc

from quota.core.streams import LegConnected
from relay.config import load_config
from relay.hub.hub import Hub
from relay.hub.stream import Stream
from relay.registry import Agent, Registry, Role
from relay.tcp.pump import ChannelLeg, TcpLeg
from relay.tcp.stream import TcpPair

AGENT = Agent(agent_id="agt_a", account="acc", role=Role.CLIENT, keys=frozenset(), active=True)
N = 500
# The relay's own objects of an idle stream (record, machine, pair, a TCP leg and a
# channel leg, two meters): about 2,150 bytes with per-object dicts and a set per pause
# set, about 1,450 with slots and pause reasons as bits (the channel leg keeps a small
# dict: asyncssh's session class has no slots).
BUDGET = 1700


def _open_streams(hub: Hub, n: int) -> list[TcpPair]:
    tunnel = hub.tunnels.add_endpoint(AGENT, "nas", 22, None)
    bucket = hub.bucket_for(AGENT)
    pairs = []
    for i in range(n):
        stream = Stream(hub, stream_id=f"s{i}", tunnel=tunnel, peer_desc="", bucket=bucket)
        pair = TcpPair(stream)
        pair.bind(TcpLeg(pair, "up"), ChannelLeg(pair, "down"))
        pair.up.connected = pair.down.connected = True
        stream.handle(LegConnected(all_connected=True, now_ms=0))
        pairs.append(pair)
    return pairs


def test_idle_stream_objects_fit_the_budget() -> None:
    """The relay's objects of an idle stream take at most BUDGET bytes each, none a dict."""
    hub = Hub(load_config(None), Registry(None), None)
    _open_streams(hub, 8)  # the bucket, tunnel and live table exist before measuring
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        pairs = _open_streams(hub, N)
        gc.collect()
        per_stream = (tracemalloc.get_traced_memory()[0] - before) / N
    finally:
        tracemalloc.stop()
    pair = pairs[0]
    for obj in (pair, pair.up, pair.stream):
        assert not hasattr(obj, "__dict__"), type(obj).__name__
    assert per_stream <= BUDGET, f"{per_stream:.0f} bytes per idle stream"
    hub.close_all("relay_shutdown")
