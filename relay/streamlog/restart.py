"""What a relay writes into its stream log when it starts after a crash.

Invariants:
- Every stream of this relay still open or paused (left by a crash) is closed
  with reason "relay_restart".
- For the runs the quota agent's journal covers (quota.agent.journal), each
  stream's bytes up and down become what the journal's reports counted: the
  journal's figures where it has a row, 0 for a stream no report counted. So
  per agent, the stream log's total equals what the billing API was told, to
  the byte. A stream the journal settled (closed in the log, figures agreed,
  closed at or before `settled_ms`) is left alone, and so are `refused`
  records (no bytes). `unanswered` records are held to the same rule; the
  journal's per-tunnel row of unanswered flows not yet written in a record
  becomes an `unanswered` record of its own.
- A closed stream whose bytes change this way gets a "corrected" record; a
  stream the journal counted but the log never heard of gets its row, closed.
- Without a journal (no billing API), streams keep the last figures written.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from quota.agent.journal import JournaledStreams, StreamFigures
from relay.streamlog.record import FIELDS, StreamRecord

ROW_FIELDS: tuple[str, ...] = FIELDS[2:]
_NOT_STREAMS = frozenset({"refused"})


def run_start_ms(run: str) -> int:
    """When a run began, from its stream id prefix ("relay-1-1a23574eed2-" -> 0x1a23574eed2).

    A worker's prefix ends in its tag ("relay-1-1a23574eed2-w1."): the time is before it.
    """
    try:
        return int(run.rsplit("-", 2)[-2], 16)
    except (IndexError, ValueError):
        return 0


def _counted(
    journaled: JournaledStreams | None, row: dict[str, Any]
) -> StreamFigures | tuple[int, int] | None:
    """The bytes the journal counted for this row's stream; None: keep the row's own."""
    sid = row["stream_id"]
    if journaled is None or row["last_event"] in _NOT_STREAMS:
        return None
    if not any(sid.startswith(run) for run in journaled.runs):
        return None
    figures = journaled.rows.get(sid)
    if figures is not None:
        return figures
    closed_at = row["closed_at_ms"]
    if row["state"] == "closed" and closed_at is not None and closed_at <= journaled.settled_ms:
        return None  # settled: the log and the journal agreed, and the journal let it go
    return (0, 0)  # no report counted a byte of it


def restart_records(
    rows: Iterable[dict[str, Any]], journaled: JournaledStreams | None, relay_id: str, now_ms: int
) -> list[StreamRecord]:
    """The records that close a crashed run's streams and set them to the journal's bytes."""
    out: list[StreamRecord] = []
    seen: set[str] = set()
    for row in rows:
        seen.add(row["stream_id"])
        values = {name: row[name] for name in ROW_FIELDS}
        counted = _counted(journaled, row)
        if isinstance(counted, StreamFigures):
            counted = (counted.bytes_up, counted.bytes_down)
        changed = counted is not None and counted != (row["bytes_up"], row["bytes_down"])
        if counted is not None:
            values.update(bytes_up=counted[0], bytes_down=counted[1])
        if row["state"] != "closed":
            values.update(state="closed", close_reason="relay_restart", pause_reason=None)
            out.append(StreamRecord(event="close", at_ms=now_ms, **values))
        elif changed:
            out.append(StreamRecord(event="corrected", at_ms=now_ms, **values))
    if journaled is not None:
        for sid, f in journaled.rows.items():
            if sid not in seen and (f.bytes_up or f.bytes_down or f.bytes_dropped):
                out.append(_unheard_of(f, relay_id, now_ms))
    return out


def _unheard_of(f: StreamFigures, relay_id: str, now_ms: int) -> StreamRecord:
    """A stream (or a tunnel's unanswered flows) the journal counted that the log never had."""
    unanswered = f.record == "unanswered"
    return StreamRecord(
        event="unanswered" if unanswered else "close",
        at_ms=now_ms,
        stream_id=f.stream_id,
        tunnel_id=f.tunnel_id,
        agent_id=f.agent_id,
        account=f.account,
        relay_id=relay_id,
        kind=f.kind,
        peer=f.peer,
        target=f.target,
        opened_at_ms=f.opened_at_ms,
        bytes_up=f.bytes_up,
        bytes_down=f.bytes_down,
        bytes_dropped=f.bytes_dropped,
        pauses=0,
        paused_ms=0,
        state="closed",
        close_reason="unanswered" if unanswered else "relay_restart",
    )
