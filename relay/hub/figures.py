"""The stream figures the quota agent's journal keeps beside each report.

Each report's usage and the figures of the streams behind it are taken at the
same instant and written in one journal transaction (quota.agent.sync), so after
a SIGKILL the journal knows, per stream, exactly the bytes the billing API is
told. At restart the stream log is set to those figures
(relay.streamlog.writer), so each agent's stream-log total equals its billed
usage to the byte.

Invariants:
- A snapshot holds every stream whose figures changed since the last write, and
  every stream closed since then with its final figures; nothing changes here
  until the journal holds it (`written`). A failed write is simply retaken.
- A closed stream's row leaves the journal (`settled`) only when the journal
  holds its final figures from an earlier report (taken before this instant)
  and the stream log has committed its close record: from then on both agree
  for good. `settled_ms` (when that earlier report was taken) lets a restart
  tell a settled stream from one never counted.
- UDP flows no answer came back to write no record of their own: per tunnel,
  one "unanswered" row holds the bytes of those still live and of those ended
  but not yet written in an `unanswered` record (the tunnel's pending sum);
  a written `unanswered` record is then a closed row like a stream's. A stream
  that closed without a byte has no row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from quota.agent.journal import StreamBatch, StreamFigures
from relay.hub.live import LiveStreams
from relay.hub.stream import Stream
from relay.hub.tunnels import Tunnel
from relay.streamlog.writer import StreamLog

# tunnel id -> (tunnel, flows, bytes in, bytes dropped) of its pending unanswered sum
Pending = Mapping[str, tuple[Tunnel, int, int, int]]

Figures = tuple[int, int, int]  # bytes up, down, dropped


def figures_of(stream: Stream, *, closed: bool) -> StreamFigures:
    tunnel = stream.tunnel
    return StreamFigures(
        stream_id=stream.stream_id,
        tunnel_id=tunnel.tunnel_id,
        agent_id=tunnel.agent.agent_id,
        account=tunnel.agent.account,
        kind=tunnel.kind,
        peer=stream.peer_desc,
        target=tunnel.target,
        opened_at_ms=stream.opened_at_ms,
        bytes_up=stream.bytes_up,
        bytes_down=stream.bytes_down,
        bytes_dropped=stream.bytes_dropped,
        closed=closed,
    )


def _counts(f: StreamFigures) -> Figures:
    return (f.bytes_up, f.bytes_down, f.bytes_dropped)


class StreamBook:
    """Implements quota.agent.sync.StreamFigureSource for one relay process's streams."""

    def __init__(
        self, run: str, live: LiveStreams, streamlog: StreamLog, clock_ms: Callable[[], int]
    ) -> None:
        self.run = run  # the id prefix of this process's streams
        self.live = live
        self.streamlog = streamlog
        self.clock_ms = clock_ms
        self._written: dict[str, Figures] = {}  # live streams: figures the journal holds
        self._closing: dict[str, tuple[StreamFigures, int]] = {}  # final figures, log position
        self._closed: dict[str, tuple[int, int]] = {}  # journaled closed: taken at, log position
        self.pending: Callable[[], Pending] | None = None  # set by the UDP side when it exists

    def unanswered_id(self, tunnel_id: str) -> str:
        """The id of a tunnel's row of unanswered flows not yet in a written record."""
        return f"{self.run}q/{tunnel_id}"

    def unanswered_written(
        self, stream_id: str, tunnel: Tunnel, sums: tuple[int, int, int], since_ms: int
    ) -> None:
        """An `unanswered` record was queued: its (flows, bytes, dropped) left the pending sum."""
        final = _unanswered_row(stream_id, tunnel, sums, since_ms, closed=True)
        self._closing[stream_id] = (final, self.streamlog.position)

    def closed(self, stream: Stream) -> None:
        """`stream` closed (its close record is queued): its final figures go in the next write."""
        final = figures_of(stream, closed=True)
        if stream.quiet or (_counts(final) == (0, 0, 0) and stream.stream_id not in self._written):
            return
        self._closing[stream.stream_id] = (final, self.streamlog.position)

    def snapshot(self) -> StreamBatch:
        now = self.clock_ms()
        rows = [
            figures_of(s, closed=False)
            for s in self.live.values()
            if not s.quiet
            and (s.bytes_up, s.bytes_down, s.bytes_dropped)
            != self._written.get(s.stream_id, (0, 0, 0))
        ]
        rows += self._unanswered_rows(now)
        rows += [final for final, _ in self._closing.values()]
        durable = self.streamlog.durable
        settled = {
            sid: taken
            for sid, (taken, position) in self._closed.items()
            if taken < now and position <= durable
        }
        return StreamBatch(
            runs=(self.run,),
            rows=tuple(rows),
            settled=tuple(settled),
            settled_ms=max(settled.values(), default=0),
            at_ms=now,
        )

    def _unanswered_rows(self, now: int) -> list[StreamFigures]:
        """Per tunnel: its live unanswered flows plus its pending sum, where that changed."""
        sums: dict[str, tuple[Tunnel, list[int]]] = {}
        for s in self.live.values():
            if s.quiet:
                entry = sums.setdefault(s.tunnel.tunnel_id, (s.tunnel, [0, 0, 0]))[1]
                entry[0] += 1
                entry[1] += s.bytes_up + s.bytes_down
                entry[2] += s.bytes_dropped
        for tunnel_id, (tunnel, flows, nbytes, dropped) in (self.pending or dict)().items():
            entry = sums.setdefault(tunnel_id, (tunnel, [0, 0, 0]))[1]
            entry[0] += flows
            entry[1] += nbytes
            entry[2] += dropped
        rows = []
        for tunnel_id, (tunnel, (flows, nbytes, dropped)) in sums.items():
            sid = self.unanswered_id(tunnel_id)
            if (nbytes, 0, dropped) != self._written.get(sid, (0, 0, 0)):
                sums_now = (flows, nbytes, dropped)
                rows.append(_unanswered_row(sid, tunnel, sums_now, now, closed=False))
        for sid in self._written.keys() - {self.unanswered_id(t) for t in sums}:
            # all of them written in records since: nothing pending any more
            if sid.startswith(f"{self.run}q/") and self._written[sid] != (0, 0, 0):
                tunnel_id = sid[len(self.run) + 2 :]
                rows.append(_emptied(sid, tunnel_id))
        return rows

    def written(self, batch: StreamBatch) -> None:
        for row in batch.rows:
            if row.closed:
                _, position = self._closing.pop(row.stream_id)
                self._written.pop(row.stream_id, None)
                self._closed[row.stream_id] = (batch.at_ms, position)
            else:
                self._written[row.stream_id] = _counts(row)
        for stream_id in batch.settled:
            self._closed.pop(stream_id, None)


def _unanswered_row(
    stream_id: str, tunnel: Tunnel, sums: tuple[int, int, int], since_ms: int, *, closed: bool
) -> StreamFigures:
    flows, nbytes, dropped = sums
    return StreamFigures(
        stream_id=stream_id,
        tunnel_id=tunnel.tunnel_id,
        agent_id=tunnel.agent.agent_id,
        account=tunnel.agent.account,
        kind=tunnel.kind,
        peer=f"unanswered flows: {flows}",
        target=tunnel.target,
        opened_at_ms=since_ms,
        bytes_up=nbytes,
        bytes_down=0,
        bytes_dropped=dropped,
        closed=closed,
        record="unanswered",
    )


def _emptied(stream_id: str, tunnel_id: str) -> StreamFigures:
    """A tunnel's unanswered row once nothing is pending: 0 bytes (written, then left)."""
    return StreamFigures(
        stream_id=stream_id,
        tunnel_id=tunnel_id,
        agent_id="",
        account="",
        kind="",
        peer="unanswered flows: 0",
        target="",
        opened_at_ms=0,
        bytes_up=0,
        bytes_down=0,
        bytes_dropped=0,
        closed=False,
        record="unanswered",
    )
