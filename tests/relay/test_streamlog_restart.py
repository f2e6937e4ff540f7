"""After a crash the stream log takes the bytes the journal counted, which the book keeps right."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from quota.agent.journal import JournaledStreams, StreamFigures
from relay.hub.figures import StreamBook
from relay.streamlog.query import list_streams
from relay.streamlog.restart import ROW_FIELDS, restart_records, run_start_ms
from relay.streamlog.writer import StreamLog
from tests.relay.test_streamlog import T0, event_rows, rec

RUN = f"r1-{T0:x}-"


def figures(stream_id: str, up: int, down: int = 0, *, closed: bool = False) -> StreamFigures:
    return StreamFigures(
        stream_id=stream_id,
        tunnel_id="acme/alice/tcp_endpoint/nas:22",
        agent_id="alice",
        account="acme",
        kind="tcp_endpoint",
        peer="support:bob@127.0.0.1:50123",
        target="nas:22",
        opened_at_ms=T0,
        bytes_up=up,
        bytes_down=down,
        bytes_dropped=0,
        closed=closed,
    )


def test_a_run_starts_when_its_id_prefix_says() -> None:
    """The run prefix carries its start in hex, before a worker's tag; none: it starts at 0."""
    assert run_start_ms(RUN) == T0
    assert run_start_ms("relay-1-1a2b-") == 0x1A2B
    assert run_start_ms("relay-1-1a2b-w1.") == 0x1A2B
    assert run_start_ms("odd") == 0


async def test_a_restart_gives_each_stream_the_bytes_the_journal_counted(tmp_path: Path) -> None:
    """Open streams close with the journal's bytes; others are corrected, kept or added."""
    db = tmp_path / "s.db"
    async with StreamLog(db, relay_id="r1") as log:
        log.record(rec(f"{RUN}1", "interim", T0 + 10, bytes_up=100))  # live at the kill
        log.record(rec(f"{RUN}2", "close", T0 + 20, bytes_up=500, close_reason="done"))
        log.record(rec(f"{RUN}3", "close", T0 + 30, bytes_up=70, close_reason="done"))  # settled
        log.record(rec(f"{RUN}4", "close", T0 + 50, bytes_up=40, close_reason="done"))  # uncounted
        log.record(rec(f"{RUN}6", "refused", T0 + 60, state="closed", close_reason="too_many"))
        log.record(rec(f"{RUN}7", "pause", T0 + 70, bytes_up=3, state="paused", pauses=1))
        log.record(rec("r1-1-1", "open", T0 + 5, bytes_up=9))  # a run the journal does not cover
        log.record(rec(f"{RUN}8", "open", T0 + 5, bytes_up=9, relay_id="r2"))  # another relay
    journaled = JournaledStreams(
        runs=(RUN,),
        rows={
            f"{RUN}1": figures(f"{RUN}1", 4000, 12),
            f"{RUN}2": figures(f"{RUN}2", 300, closed=True),
            f"{RUN}5": figures(f"{RUN}5", 77, 1),  # counted, but never reached the log
        },
        settled_ms=T0 + 40,
    )
    with capture_logs() as logs:
        async with StreamLog(db, relay_id="r1", journaled=journaled):
            pass
    [line] = [e for e in logs if e["event"] == "stream_log_restart"]
    assert (line["closed"], line["corrected"], line["journal"]) == (4, 2, True)
    every = await list_streams(db)
    rows = {
        r["stream_id"][len(RUN) :]: r
        for r in every
        if r["relay_id"] == "r1" and r["stream_id"].startswith(RUN)
    }
    got = {
        k: (r["bytes_up"], r["bytes_down"], r["state"], r["close_reason"]) for k, r in rows.items()
    }
    assert got == {
        "1": (4000, 12, "closed", "relay_restart"),
        "2": (300, 0, "closed", "done"),
        "3": (70, 0, "closed", "done"),
        "4": (0, 0, "closed", "done"),
        "5": (77, 1, "closed", "relay_restart"),
        "6": (0, 0, "closed", "too_many"),
        "7": (0, 0, "closed", "relay_restart"),
    }
    assert rows["7"]["pauses"] == 1  # pause figures are the log's own
    other = {r["stream_id"]: r for r in every if r["relay_id"] == "r1"}["r1-1-1"]
    assert (other["bytes_up"], other["close_reason"]) == (9, "relay_restart")
    r2 = [(r["bytes_up"], r["state"]) for r in every if r["relay_id"] == "r2"]
    assert r2 == [(9, "open")]
    corrected = [e for e in event_rows(db) if e[1] == "corrected"]
    assert sorted((e[2], e[3]) for e in corrected) == [(f"{RUN}2", 300), (f"{RUN}4", 0)]


def test_restart_records_leave_everything_alone_without_a_journal() -> None:
    """No billing, no journal: an open stream closes with its own last figures."""
    row: dict[str, Any] = {
        **vars_of(rec(f"{RUN}1", "interim", bytes_up=5)),
        "last_event": "interim",
        "closed_at_ms": None,
    }
    [out] = restart_records([row], None, "r1", T0 + 1)
    assert (out.event, out.bytes_up, out.close_reason, out.at_ms) == (
        "close",
        5,
        "relay_restart",
        T0 + 1,
    )


def vars_of(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in ROW_FIELDS}


@dataclass
class _Tunnel:
    tunnel_id: str = "t"
    kind: str = "tcp_endpoint"
    target: str = "nas:22"
    agent: Any = field(default_factory=lambda: type("A", (), {"agent_id": "a", "account": "x"})())


@dataclass
class _Stream:
    stream_id: str
    bytes_up: int = 0
    bytes_down: int = 0
    bytes_dropped: int = 0
    quiet: bool = False
    peer_desc: str = "p"
    opened_at_ms: int = 0
    tunnel: _Tunnel = field(default_factory=_Tunnel)


@dataclass
class _Log:
    position: int = 0
    durable: int = 0


def test_the_book_writes_changes_and_closes_and_settles_only_what_both_sides_hold() -> None:
    """Changed and closed streams go in; a close settles once journaled earlier and committed."""
    live: dict[str, _Stream] = {}
    log, now = _Log(), [100]
    book = StreamBook("r-", live, log, lambda: now[0])  # type: ignore[arg-type]
    live["s1"], live["s2"], live["q"] = _Stream("s1", 5), _Stream("s2"), _Stream("q", 9, quiet=True)
    batch = book.snapshot()
    assert [r.stream_id for r in batch.rows] == ["s1", "r-q/t"]  # a quiet flow: its tunnel's row
    book.written(batch)
    assert book.snapshot().rows == ()  # nothing changed since
    live["s1"].bytes_down = 2
    closed = live.pop("s1")
    log.position = 7
    book.closed(closed)  # type: ignore[arg-type]
    book.closed(live.pop("s2"))  # type: ignore[arg-type]  # no byte ever: no row
    batch = book.snapshot()
    assert [(r.stream_id, r.bytes_down, r.closed) for r in batch.rows] == [("s1", 2, True)]
    book.written(batch)
    assert book.snapshot().settled == ()  # taken at this very instant
    now[0] = 101
    assert book.snapshot().settled == ()  # the log has not committed the close yet
    log.durable = 7
    batch = book.snapshot()
    assert (batch.settled, batch.settled_ms) == (("s1",), 100)
    book.written(batch)
    assert book.snapshot().settled == ()


def test_unanswered_flows_are_one_row_a_tunnel_until_a_record_holds_them() -> None:
    """Live quiet flows plus the pending sum make the tunnel's row; a record takes them over."""
    live: dict[str, _Stream] = {"q1": _Stream("q1", 9, quiet=True)}
    log, tunnel = _Log(position=3), _Tunnel()
    pending: dict[str, tuple[Any, int, int, int]] = {"t": (tunnel, 2, 40, 1)}
    book = StreamBook("r-", live, log, lambda: 50)  # type: ignore[arg-type]
    book.pending = lambda: pending
    [row] = book.snapshot().rows
    assert (row.stream_id, row.record, row.peer) == ("r-q/t", "unanswered", "unanswered flows: 3")
    assert (row.bytes_up, row.bytes_dropped, row.closed) == (49, 1, False)
    book.written(book.snapshot())
    pending.clear()  # the pending sum became a record
    book.unanswered_written("r-n1", tunnel, (2, 40, 1), 7)  # type: ignore[arg-type]
    live.clear()  # and the live flow was answered or ended in the next sum... gone here
    rows = {r.stream_id: r for r in book.snapshot().rows}
    assert (rows["r-q/t"].bytes_up, rows["r-q/t"].record) == (0, "unanswered")
    assert (rows["r-n1"].bytes_up, rows["r-n1"].closed, rows["r-n1"].opened_at_ms) == (40, True, 7)
    book.written(book.snapshot())
    assert book.snapshot().rows == ()


async def test_a_restart_holds_unanswered_records_to_the_journal_too(tmp_path: Path) -> None:
    """A record the journal counted stays; one it never counted is 0; its pending row is added."""
    db = tmp_path / "s.db"
    udp = {"kind": "udp_public", "state": "closed", "close_reason": "unanswered"}
    async with StreamLog(db, relay_id="r1") as log:
        log.record(rec(f"{RUN}n1", "unanswered", T0 + 10, bytes_up=10, **udp))
        log.record(rec(f"{RUN}n2", "unanswered", T0 + 90, bytes_up=20, **udp))
    counted = replace(figures(f"{RUN}n1", 10, closed=True), record="unanswered")
    pending = replace(figures(f"{RUN}q/t", 33), record="unanswered", peer="unanswered flows: 4")
    empty = replace(figures(f"{RUN}q/u", 0), record="unanswered")
    rows = {r.stream_id: r for r in (counted, pending, empty)}
    journaled = JournaledStreams(runs=(RUN,), rows=rows, settled_ms=T0 + 40)
    async with StreamLog(db, relay_id="r1", journaled=journaled):
        pass
    got = {
        r["stream_id"][len(RUN) :]: (r["bytes_up"], r["close_reason"], r["last_event"], r["peer"])
        for r in await list_streams(db)
    }
    assert got == {
        "n1": (10, "unanswered", "unanswered", "support:bob@127.0.0.1:50123"),
        "n2": (0, "unanswered", "corrected", "support:bob@127.0.0.1:50123"),
        "q/t": (33, "unanswered", "unanswered", "unanswered flows: 4"),
    }
