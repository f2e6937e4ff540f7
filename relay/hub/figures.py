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
- A stream that writes no record (an unanswered UDP flow, summed apart) and a
  stream that closed without a byte have no row.
"""

from __future__ import annotations

from collections.abc import Callable

from quota.agent.journal import StreamBatch, StreamFigures
from relay.hub.live import LiveStreams
from relay.hub.stream import Stream
from relay.streamlog.writer import StreamLog

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
        rows += [final for final, _ in self._closing.values()]
        durable = self.streamlog.durable
        settled = {
            sid: taken
            for sid, (taken, position) in self._closed.items()
            if taken < now and position <= durable
        }
        return StreamBatch(
            run=self.run,
            rows=tuple(rows),
            settled=tuple(settled),
            settled_ms=max(settled.values(), default=0),
            at_ms=now,
        )

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
