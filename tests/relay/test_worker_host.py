"""The supervisor of a relay of workers, fed its workers' messages directly (no processes)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from quota.agent.journal import StreamFigures
from relay.config import load_config
from relay.registry import Registry
from relay.workers.figures import RelayBook
from relay.workers.host import WorkerHost
from relay.workers.messages import LeaseAnswered, Message, Ready, Usage, Want


class FakeLog:
    """What the host and the book read of the stream log: positions, and the records."""

    def __init__(self) -> None:
        self.records: list[Any] = []
        self.durable = 0

    @property
    def position(self) -> int:
        return len(self.records)

    def record(self, rec: Any) -> None:
        self.records.append(rec)


class FakeLink:
    def __init__(self) -> None:
        self.sent: list[Message] = []

    def send(self, message: Message) -> None:
        self.sent.append(message)


def _host() -> WorkerHost:
    host = WorkerHost(load_config(None), Registry(None), FakeLog())  # type: ignore[arg-type]
    host.joined(1, FakeLink(), Ready(worker=0, pid=1))  # type: ignore[arg-type]
    return host


def _usage(**keys: Any) -> Usage:
    empty: dict[str, Any] = {"used_total": {}, "tunnels": 0, "holding": [], "refused": {}}
    empty |= {"tunnel_bytes": [], "tunnel_ms": [], "connections": {}}
    return Usage(**{**empty, **keys})


def test_a_report_on_the_workers_cadence_keeps_what_its_last_refresh_showed() -> None:
    """Streams a worker's answer to a refresh showed stay shown after its next routine report."""
    host = _host()
    host.handle(1, _usage(seq=1, live=[{"stream_id": "s1", "state": "paused"}]))
    host.handle(1, _usage())  # every 100 ms, between a refresh and the read it serves
    assert [(v["stream_id"], v["worker"]) for v in host.streams()] == [("s1", 0)]
    assert host.pause_stream("s1", True)["stream_id"] == "s1"


def test_the_relays_shortfall_is_what_streams_wait_for_not_a_workers_headroom() -> None:
    """A worker's headroom asks billing for nothing; its waiting streams do; so does `can_pay`."""
    host = _host()
    host.handle(1, _usage(holding=["a"]))
    host.handle(1, Want(agent_id="a", nbytes=16_000_000, need=0))  # headroom: nothing waits
    held = host.holdings()["a"]
    assert (held.short, held.tunnels, held.can_pay) == (0, True, True)  # a tunnel primes it
    host.handle(1, Want(agent_id="a", nbytes=16_000_000, need=1500))  # a datagram was refused
    assert host.holdings()["a"].short == 1500
    host.lease_answered("a", exhausted=True)
    assert not host.holdings()["a"].can_pay
    assert isinstance(host.links[1].sent[-1], LeaseAnswered)


def _row(sid: str, up: int, *, closed: bool = False) -> StreamFigures:
    return StreamFigures(
        stream_id=sid,
        tunnel_id="t",
        agent_id="a",
        account="acme",
        kind="tcp_endpoint",
        peer="p",
        target="nas:22",
        opened_at_ms=1,
        bytes_up=up,
        bytes_down=0,
        bytes_dropped=0,
        closed=closed,
    )


def test_the_book_journals_the_workers_latest_figures_and_settles_closed_streams() -> None:
    """Each write takes the newest figures; one newer than a write waits for the next; closes
    settle once journaled before and committed in the log, as in one process."""
    log, now = FakeLog(), [100]
    book = RelayBook(log, lambda: now[0])  # type: ignore[arg-type]
    book.reported("r-1-w0.", [_row("r-1-w0.1", 5), _row("r-1-w0.2", 7)])
    book.reported("r-2-w1.", [_row("r-2-w1.1", 3)])
    batch = book.snapshot()
    assert batch.runs == ("r-1-w0.", "r-2-w1.") and len(batch.rows) == 3
    book.reported("r-1-w0.", [_row("r-1-w0.1", 9)])  # came in while the journal wrote
    book.written(batch)
    assert book.snapshot().rows == (_row("r-1-w0.1", 9),)
    log.record("close of r-1-w0.2")
    book.reported("r-1-w0.", [_row("r-1-w0.2", 8, closed=True)])
    batch = book.snapshot()
    book.written(batch)
    assert book.snapshot().rows == () and book.snapshot().settled == ()
    now[0] = 101
    assert book.snapshot().settled == ()  # the log has not committed the close yet
    log.durable = 1
    settled = book.snapshot()
    assert (settled.settled, settled.settled_ms) == (("r-1-w0.2",), 100)
    book.written(replace(settled, rows=()))
    assert book.snapshot().settled == ()
