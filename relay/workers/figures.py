"""The stream figures a relay of workers journals with each report, kept by the supervisor.

Each worker keeps a stream book of its own (relay.hub.figures.StreamBook) and
sends, with every usage report, the figures of its streams that changed since
its previous report, taken at the same instant as that report's usage, its
stream-log records first. The supervisor's quota agent reports the sum of the
workers' last reports (relay.workers.host); this book hands it, at the same
instant, the figures of those same reports. So after a SIGKILL of the
supervisor the journal holds, for every stream, the bytes billing is (or will
be) told, as it does for one process, and the restart rebuilds the stream log
from them (relay.streamlog.restart).

Invariants:
- `latest` holds each live stream's newest figures the journal does not hold
  yet; a row written to the journal leaves it only if no newer one came in
  while the journal wrote.
- A closed row's close record reached the stream log before the row did (a
  worker sends its records before its report), so the log position noted with
  it is at or after that record's.
- A closed stream's row leaves the journal (`settled`) by the rule of one
  process: the journal holds its final figures from an earlier report, and the
  stream log committed its close record.
- Every run seen (one per worker incarnation) is named in every batch, so a
  restart knows which streams the journal speaks for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from quota.agent.journal import StreamBatch, StreamFigures
from relay.streamlog.writer import StreamLog


class RelayBook:
    """Implements quota.agent.sync.StreamFigureSource over the workers' reported figures."""

    def __init__(self, streamlog: StreamLog, clock_ms: Callable[[], int]) -> None:
        self.streamlog = streamlog
        self.clock_ms = clock_ms
        self._runs: dict[str, None] = {}  # the worker incarnations' id prefixes, in order
        self._latest: dict[str, StreamFigures] = {}  # live streams: figures not journaled yet
        self._closing: dict[str, tuple[StreamFigures, int]] = {}  # final figures, log position
        self._closed: dict[str, tuple[int, int]] = {}  # journaled closed: taken at, log position

    def reported(self, run: str, rows: Iterable[StreamFigures]) -> None:
        """A worker's report came with `rows`, its records before them."""
        if run:
            self._runs.setdefault(run)
        position = self.streamlog.position
        for row in rows:
            if row.closed:
                self._latest.pop(row.stream_id, None)
                self._closing[row.stream_id] = (row, position)
            else:
                self._latest[row.stream_id] = row

    def snapshot(self) -> StreamBatch:
        now = self.clock_ms()
        durable = self.streamlog.durable
        settled = {
            sid: taken
            for sid, (taken, position) in self._closed.items()
            if taken < now and position <= durable
        }
        return StreamBatch(
            runs=tuple(self._runs),
            rows=(*self._latest.values(), *(final for final, _ in self._closing.values())),
            settled=tuple(settled),
            settled_ms=max(settled.values(), default=0),
            at_ms=now,
        )

    def written(self, batch: StreamBatch) -> None:
        for row in batch.rows:
            sid = row.stream_id
            if row.closed:
                entry = self._closing.pop(sid, None)
                if entry is not None:
                    self._closed[sid] = (batch.at_ms, entry[1])
            elif self._latest.get(sid) is row:  # none newer came in meanwhile
                del self._latest[sid]
        for sid in batch.settled:
            self._closed.pop(sid, None)
