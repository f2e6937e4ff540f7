"""The journal: reports stored as sent, numbers never reused, every storage error its own."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from quota.agent.errors import JournalError
from quota.agent.journal import Journal, StreamBatch, StreamFigures


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Another connection holds a write transaction on the file (an operator's sqlite3 shell)."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


async def test_a_report_is_stored_as_sent_under_the_next_number_only(tmp_path: Path) -> None:
    """The body comes back byte for byte; a number other than the next one is refused."""
    async with Journal(tmp_path / "j.db") as journal:
        assert await journal.next_seq() == 1
        await journal.append(1, b'{"seq": 1}', {"a": 5}, {}, 0)
        for wrong in (1, 3):
            with pytest.raises(JournalError, match="next number is 2"):
                await journal.append(wrong, b"{}", {"a": 7}, {}, 0)
        assert await journal.pending() == [(1, b'{"seq": 1}')]
        assert (await journal.leases())["a"].used_total == 5  # the refused writes left nothing
        await journal.ack(1, {"a": 100})
    async with Journal(tmp_path / "j.db") as journal:
        assert await journal.next_seq() == 2 and await journal.pending() == []
        assert (await journal.leases())["a"].remaining == 95


async def test_a_locked_journal_fails_every_write_with_a_journal_error(tmp_path: Path) -> None:
    """Another writer holding the file: each write is a JournalError naming its step, undone."""
    async with Journal(tmp_path / "j.db") as journal:
        await journal.db.execute("PRAGMA busy_timeout = 20")  # fail fast rather than wait 5 s
        with locked(tmp_path / "j.db"):
            with pytest.raises(JournalError, match="cannot write a report"):
                await journal.append(1, b"{}", {"a": 1}, {}, 0)
            with pytest.raises(JournalError, match="cannot acknowledge"):
                await journal.ack(1, {"a": 1})
            with pytest.raises(JournalError, match="cannot record expired leases"):
                await journal.drop({"a": 1})
            with pytest.raises(JournalError, match="cannot cache the agent registry"):
                await journal.save_agents([])
            with pytest.raises(JournalError, match="cannot record pushed leases"):
                await journal.applied({"a": 1})
        await journal.append(1, b"{}", {"a": 1}, {}, 0)  # the lock gone, writes work again
        assert await journal.pending_count() == 1
        assert (await journal.leases())["a"].applied_total == 0


async def test_a_closed_connection_fails_every_read_with_a_journal_error(tmp_path: Path) -> None:
    """Reads on a connection that went away are JournalErrors, not aiosqlite's ValueError."""
    async with Journal(tmp_path / "j.db") as journal:
        await journal.db.close()
        for read in (journal.pending, journal.pending_count, journal.leases, journal.load_agents):
            with pytest.raises(JournalError, match="cannot"):
                await read()
        with pytest.raises(JournalError, match="cannot"):
            await journal.next_seq()


async def test_writes_from_two_loops_at_once_each_stay_whole(tmp_path: Path) -> None:
    """A registry save racing a report write neither fails it nor rolls it back."""
    async with Journal(tmp_path / "j.db") as journal:
        await asyncio.gather(
            journal.append(1, b"{}", {"a": 1}, {}, 0),
            journal.save_agents([{"id": "a"}]),
            journal.append(2, b"{}", {"a": 2}, {}, 0),
        )
        assert await journal.next_seq() == 3 and await journal.pending_count() == 2
        assert await journal.load_agents() == [{"id": "a"}]
        assert (await journal.leases())["a"].used_total == 3


def _figures(stream_id: str, up: int, *, closed: bool = False) -> StreamFigures:
    return StreamFigures(
        stream_id=stream_id,
        tunnel_id="acme/a/tcp_endpoint/nas:22",
        agent_id="a",
        account="acme",
        kind="tcp_endpoint",
        peer="support:t@127.0.0.1:1",
        target="nas:22",
        opened_at_ms=7,
        bytes_up=up,
        bytes_down=1,
        bytes_dropped=0,
        closed=closed,
    )


async def test_stream_figures_ride_with_their_report_and_settle_away(tmp_path: Path) -> None:
    """Figures are written with the report, the latest wins; settled ones go, the mark stays."""
    async with Journal(tmp_path / "j.db") as journal:
        first = StreamBatch(runs=("r-1-",), rows=(_figures("r-1-1", 5), _figures("r-1-2", 9)))
        await journal.append(1, b"{}", {"a": 16}, {}, 0, streams=first)
        closed = (_figures("r-1-1", 8, closed=True),)
        await journal.append(
            2, b"{}", {"a": 3}, {}, 0, streams=StreamBatch(runs=("r-1-",), rows=closed)
        )
        with locked(tmp_path / "j.db"), pytest.raises(JournalError):
            rows = (_figures("r-1-2", 99),)
            await journal.append(
                3, b"{}", {"a": 90}, {}, 0, streams=StreamBatch(runs=("r-1-",), rows=rows)
            )
        got = await journal.journaled_streams()
        assert got.runs == ("r-1-",) and got.settled_ms == 0
        assert got.rows == {"r-1-1": closed[0], "r-1-2": _figures("r-1-2", 9)}
        settle = StreamBatch(runs=("r-1-",), rows=(), settled=("r-1-1",), settled_ms=1234)
        await journal.append(3, b"{}", {}, {}, 0, streams=settle)
    async with Journal(tmp_path / "j.db") as journal:
        got = await journal.journaled_streams()
        assert (list(got.rows), got.settled_ms) == (["r-1-2"], 1234)
        await journal.forget_streams()
        got = await journal.journaled_streams()
        assert (got.runs, dict(got.rows), got.settled_ms) == ((), {}, 1234)


async def test_a_report_of_many_agents_is_a_few_trips_to_the_journal(tmp_path: Path) -> None:
    """Writing, acknowledging and expiring 1,000 agents' leases: one statement each, not 1,000."""
    agents = [f"agt-{n}" for n in range(1000)]
    async with Journal(tmp_path / "j.db") as journal:
        sent: list[str] = []
        execute, executemany = journal.db.execute, journal.db.executemany

        def counted(original: Any) -> Any:
            def call(sql: str, *args: Any) -> Any:
                sent.append(sql)
                return original(sql, *args)

            return call

        journal.db.execute = counted(execute)  # type: ignore[method-assign]
        journal.db.executemany = counted(executemany)  # type: ignore[method-assign]
        await journal.append(1, b"{}", dict.fromkeys(agents, 5), {"agt-1": 2}, 0)
        await journal.ack(1, dict.fromkeys(agents, 100))
        await journal.drop(dict.fromkeys(agents, 1))
        assert len(sent) < 20, len(sent)
        held = await journal.leases()
    assert (held["agt-1"].used_total, held["agt-1"].returned_total) == (5, 3)
    assert held["agt-999"].applied_total == 100 and held["agt-999"].remaining == 94


async def test_a_pushed_lease_is_one_trip_that_commits_itself(tmp_path: Path) -> None:
    """Pushed leases of any number of agents: one statement, committed before it returns."""
    async with Journal(tmp_path / "j.db") as journal:
        await journal.ack(0, {"a": 500})  # a higher total already held is kept
        trips: list[str] = []
        for name in ("execute", "executemany", "executescript", "commit", "rollback"):
            original = getattr(journal.db, name)

            def counted(*args: Any, _name: str = name, _original: Any = original) -> Any:
                trips.append(_name)
                return _original(*args)

            setattr(journal.db, name, counted)
        await journal.applied({"a": 300, "b": 2**62, **{f"agt-{n}": n for n in range(20_000)}})
        assert trips == ["execute"]
        other = sqlite3.connect(tmp_path / "j.db")  # committed: another connection sees it
        try:
            rows = dict(other.execute("SELECT agent_id, applied_total FROM leases").fetchall())
        finally:
            other.close()
    assert (rows["a"], rows["b"], rows["agt-19999"], len(rows)) == (500, 2**62, 19_999, 20_002)
