"""The live streams of one relay and the usage totals the billing sync reads.

Invariants:
- A stream is live from its "open" to its close, and counted once either way:
  while live through its meters, once closed in `closed_usage`.
- Usage and tunnel time are cumulative per (agent, tunnel) for this process,
  so the quota agent's deltas add up to each bucket's `used` exactly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping

from relay.hub.stream import Stream
from relay.hub.tunnels import Tunnel


class LiveStreams(Mapping[str, Stream]):
    """Live streams by id, and the totals of those that closed."""

    def __init__(self) -> None:
        self._live: dict[str, Stream] = {}
        self.closed_usage: Counter[tuple[str, str]] = Counter()  # (agent, tunnel) -> bytes
        self.closed_time: Counter[tuple[str, str]] = Counter()  # (agent, tunnel) -> ms open
        # (agent, tunnel, "up" or "down") -> bytes: the per-direction totals metrics read
        self.closed_bytes: Counter[tuple[str, str, str]] = Counter()

    def __getitem__(self, stream_id: str) -> Stream:
        return self._live[stream_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._live)

    def __len__(self) -> int:
        return len(self._live)

    def opened(self, stream: Stream) -> None:
        self._live[stream.stream_id] = stream
        stream.tunnel.streams.add(stream)

    def closed(self, stream: Stream) -> None:
        self._live.pop(stream.stream_id, None)
        stream.tunnel.streams.discard(stream)
        key = (stream.tunnel.agent.agent_id, stream.tunnel.tunnel_id)
        self.closed_usage[key] += stream.bytes_up + stream.bytes_down
        self.closed_bytes[(*key, "up")] += stream.bytes_up
        self.closed_bytes[(*key, "down")] += stream.bytes_down

    def tunnel_closed(self, tunnel: Tunnel, now_ms: int) -> None:
        self.closed_time[(tunnel.agent.agent_id, tunnel.tunnel_id)] += now_ms - tunnel.opened_ms

    def of_agent(self, agent_id: str) -> list[Stream]:
        return [s for s in self._live.values() if s.tunnel.agent.agent_id == agent_id]

    def usage(self) -> dict[tuple[str, str], int]:
        totals: Counter[tuple[str, str]] = Counter(self.closed_usage)
        for stream in self._live.values():
            key = (stream.tunnel.agent.agent_id, stream.tunnel.tunnel_id)
            totals[key] += stream.bytes_up + stream.bytes_down
        return dict(totals)

    def bytes_by_direction(self) -> dict[tuple[str, str, str], int]:
        """Cumulative bytes per (agent, tunnel, direction), live streams included."""
        totals: Counter[tuple[str, str, str]] = Counter(self.closed_bytes)
        for stream in self._live.values():
            key = (stream.tunnel.agent.agent_id, stream.tunnel.tunnel_id)
            totals[(*key, "up")] += stream.bytes_up
            totals[(*key, "down")] += stream.bytes_down
        return dict(totals)

    def tunnel_time(self, tunnels: Iterable[Tunnel], now_ms: int) -> dict[tuple[str, str], int]:
        totals: Counter[tuple[str, str]] = Counter(self.closed_time)
        for tunnel in tunnels:
            totals[(tunnel.agent.agent_id, tunnel.tunnel_id)] += now_ms - tunnel.opened_ms
        return dict(totals)
