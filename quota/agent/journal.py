"""The relay's durable journal: the usage outbox, lease totals and the agent cache.

Invariants:
- A report and the lease totals it moves are written in one transaction, under
  the next sequence number: a report is never half-written, and a number is
  never reused (it survives restarts), so the billing API can apply each once.
- A report leaves the outbox only when the billing API acknowledged it.
- `applied_total` only grows: it is the cumulative lease the billing API
  granted this relay for an agent, as far as this relay has put it in buckets.
- A report is stored under the number it was given before it was encoded,
  and only if that is the next number: the body stored is the body sent.
- Every storage error (sqlite3, aiosqlite, OSError) leaves this module as a
  `JournalError` naming the step; a failed write is rolled back whole.
- One long-lived aiosqlite connection in WAL mode, used by one step at a time
  (a transaction never takes in another task's statements); closed on exit
  even when cancelled. It is in autocommit mode: a write of several statements
  is one explicit transaction (`_writing`), a write of one statement commits
  itself (a pushed lease, which a waiting stream must not wait three trips for).
- A report may carry the figures of the relay's streams taken at the same
  instant as its usage (`StreamBatch`); they are written in its transaction, so
  after a crash the journal holds, for every stream, the bytes the reports it
  holds counted: what the billing API is (or will be) told. A relay rebuilds its
  stream log from them at restart (relay.streamlog.writer), then forgets them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Mapping
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite

from quota.agent.errors import JournalError
from quota.core.sync import HeldLease
from quota.private_files import private_database
from quota.sqlite_open import join_worker

# What sqlite3 and aiosqlite raise: ValueError is aiosqlite's "no active connection".
_STORAGE_ERRORS = (sqlite3.Error, OSError, ValueError)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY, body TEXT NOT NULL, created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    agent_id TEXT PRIMARY KEY,
    applied_total INTEGER NOT NULL DEFAULT 0,
    used_total INTEGER NOT NULL DEFAULT 0,
    returned_total INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS agents_cache (id INTEGER PRIMARY KEY CHECK (id = 1), body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stream_figures (
    stream_id TEXT PRIMARY KEY, tunnel_id TEXT NOT NULL, agent_id TEXT NOT NULL,
    account TEXT NOT NULL, kind TEXT NOT NULL, peer TEXT NOT NULL, target TEXT NOT NULL,
    opened_at_ms INTEGER NOT NULL, bytes_up INTEGER NOT NULL, bytes_down INTEGER NOT NULL,
    bytes_dropped INTEGER NOT NULL, closed INTEGER NOT NULL,
    record TEXT NOT NULL DEFAULT 'stream'
);
CREATE TABLE IF NOT EXISTS stream_runs (prefix TEXT PRIMARY KEY);
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamFigures:
    """One stream's cumulative figures as of a report, with what names it in the stream log."""

    stream_id: str
    tunnel_id: str
    agent_id: str
    account: str
    kind: str
    peer: str
    target: str
    opened_at_ms: int
    bytes_up: int
    bytes_down: int
    bytes_dropped: int
    closed: bool  # its final figures
    # "stream", or "unanswered": UDP flows of one tunnel that no answer came back to
    record: str = "stream"


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamBatch:
    """The stream figures one report carries into the journal.

    `runs` are the id prefixes of the streams it covers (one a relay process, or
    one a worker process of a relay of workers); `settled` are streams
    the stream log holds closed with the figures the journal has (no longer
    needed), the latest of them journaled closed at `settled_ms`.
    """

    runs: tuple[str, ...]
    rows: tuple[StreamFigures, ...]
    settled: tuple[str, ...] = ()
    settled_ms: int = 0
    at_ms: int = 0  # when the figures were taken (the relay's clock)


@dataclass(frozen=True, slots=True, kw_only=True)
class JournaledStreams:
    """What the journal holds of streams at start: the runs it covers and their figures.

    A stream of a covered run that is not in `rows` either was settled (closed in
    the stream log at or before `settled_ms`, figures agreed) or was never counted
    in a report (0 bytes told).
    """

    runs: tuple[str, ...]
    rows: Mapping[str, StreamFigures]
    settled_ms: int


# agent -> applied total as one JSON object: any number of agents in one statement
_RAISE_APPLIED_ALONE = (
    "INSERT INTO leases (agent_id, applied_total) SELECT key, value FROM json_each(?) WHERE true "
    "ON CONFLICT(agent_id) DO UPDATE SET "
    "applied_total = MAX(applied_total, excluded.applied_total)"
)

_FIGURE_COLUMNS = tuple(f.name for f in fields(StreamFigures))
_UPSERT_FIGURES = (
    f"INSERT INTO stream_figures ({', '.join(_FIGURE_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(_FIGURE_COLUMNS))})"
    " ON CONFLICT (stream_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _FIGURE_COLUMNS if c != "stream_id")
)


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        # One statement sequence at a time on the one connection: the sync and the
        # registry loops share it, and a transaction must not take in another's statements.
        self._turn = asyncio.Lock()

    async def __aenter__(self) -> Journal:
        pending = None
        try:
            private_database(self.path)
            # autocommit: a transaction is only what `_writing` begins, so one statement
            # alone (`applied`) commits itself without a second trip for COMMIT
            pending = aiosqlite.connect(self.path, isolation_level=None)
            self._db = await pending
        except Exception as exc:  # sqlite3 errors never leave this module
            if pending is not None:
                await join_worker(pending)
            raise JournalError(f"cannot open the journal {self.path}: {exc}") from None
        try:
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.execute("PRAGMA synchronous=NORMAL")
            await self._db.executescript(_SCHEMA)
            await self._db.commit()
        except Exception as exc:  # sqlite3 errors never leave this module
            db, self._db = self._db, None
            await asyncio.shield(db.close())
            raise JournalError(f"cannot open the journal {self.path}: {exc}") from None
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            try:
                await asyncio.shield(db.close())
            except _STORAGE_ERRORS as exc:
                raise JournalError(f"cannot close the journal {self.path}: {exc}") from None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise JournalError("the journal is not open")
        return self._db

    @contextlib.asynccontextmanager
    async def _step(self, step: str) -> AsyncIterator[aiosqlite.Connection]:
        """The connection for one step outside a transaction: reads, or one statement that
        commits itself (autocommit; SQLite undoes a failed statement whole)."""
        async with self._turn:
            try:
                yield self.db
            except _STORAGE_ERRORS as exc:
                raise JournalError(f"cannot {step}: {exc}") from None

    @contextlib.asynccontextmanager
    async def _writing(self, step: str) -> AsyncIterator[aiosqlite.Connection]:
        """One transaction: committed whole, or rolled back and raised as a JournalError."""
        async with self._turn:
            db = self.db
            try:
                await db.execute("BEGIN IMMEDIATE")
            except _STORAGE_ERRORS as exc:  # nothing began: nothing to roll back
                raise JournalError(f"cannot {step}: {exc}") from None
            try:
                yield db
                await db.commit()
            except BaseException as exc:  # a cancelled write is rolled back too
                with contextlib.suppress(*_STORAGE_ERRORS):
                    await asyncio.shield(db.rollback())
                if isinstance(exc, _STORAGE_ERRORS):
                    raise JournalError(f"cannot {step}: {exc}") from None
                raise

    async def next_seq(self) -> int:
        """The number the next report must carry (1 for a new journal)."""
        async with self._step("read the next report number") as db:
            row = await (
                await db.execute("SELECT value FROM meta WHERE key = 'next_seq'")
            ).fetchone()
        return int(row[0]) if row else 1

    async def append(
        self,
        seq: int,
        body: bytes,
        used: Mapping[str, int],
        returned: Mapping[str, int],
        now_ms: int,
        streams: StreamBatch | None = None,
    ) -> None:
        """Store one encoded report under `seq`, the next number, with its lease totals.

        `streams`, the stream figures taken with the report's usage, go in the same transaction.
        """
        async with self._writing("write a report to the journal") as db:
            row = await (
                await db.execute("SELECT value FROM meta WHERE key = 'next_seq'")
            ).fetchone()
            expected = int(row[0]) if row else 1
            if seq != expected:
                raise JournalError(
                    f"report numbered {seq}, the journal's next number is {expected}"
                )
            await db.execute(
                "INSERT INTO outbox (seq, body, created_ms) VALUES (?, ?, ?)", (seq, body, now_ms)
            )
            await db.execute(
                "INSERT INTO meta (key, value) VALUES ('next_seq', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (seq + 1,),
            )
            await db.executemany(  # one trip to the connection's thread for all agents
                "INSERT INTO leases (agent_id, used_total, returned_total) VALUES (?, ?, ?) "
                "ON CONFLICT(agent_id) DO UPDATE SET "
                "used_total = used_total + excluded.used_total, "
                "returned_total = returned_total + excluded.returned_total",
                [(a, used.get(a, 0), returned.get(a, 0)) for a in used.keys() | returned.keys()],
            )
            if streams is not None:
                await self._write_streams(db, streams)

    @staticmethod
    async def _write_streams(db: aiosqlite.Connection, batch: StreamBatch) -> None:
        await db.executemany(
            "INSERT OR IGNORE INTO stream_runs (prefix) VALUES (?)", [(r,) for r in batch.runs]
        )
        await db.executemany(_UPSERT_FIGURES, [astuple(row) for row in batch.rows])
        await db.executemany(
            "DELETE FROM stream_figures WHERE stream_id = ?", [(s,) for s in batch.settled]
        )
        if batch.settled:
            await db.execute(
                "INSERT INTO meta (key, value) VALUES ('streams_settled_ms', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)",
                (batch.settled_ms,),
            )

    async def journaled_streams(self) -> JournaledStreams:
        """The stream figures the reports in this journal counted (read at start)."""
        async with self._step("read the stream figures") as db:
            runs = await (await db.execute("SELECT prefix FROM stream_runs")).fetchall()
            cursor = await db.execute(f"SELECT {', '.join(_FIGURE_COLUMNS)} FROM stream_figures")
            rows = await cursor.fetchall()
            settled = await (
                await db.execute("SELECT value FROM meta WHERE key = 'streams_settled_ms'")
            ).fetchone()
        figures = [
            StreamFigures(
                **{**dict(zip(_FIGURE_COLUMNS, row, strict=True)), "closed": bool(row[-2])}
            )
            for row in rows
        ]
        return JournaledStreams(
            runs=tuple(str(r[0]) for r in runs),
            rows={f.stream_id: f for f in figures},
            settled_ms=int(settled[0]) if settled else 0,
        )

    async def forget_streams(self) -> None:
        """Drop the stream figures of earlier runs, once the stream log agrees with them."""
        async with self._writing("forget the stream figures of earlier runs") as db:
            await db.execute("DELETE FROM stream_figures")
            await db.execute("DELETE FROM stream_runs")

    async def pending(self, limit: int = 100) -> list[tuple[int, bytes]]:
        """Reports not acknowledged yet, oldest first, each body as it is sent."""
        async with self._step("read the outbox") as db:
            cursor = await db.execute("SELECT seq, body FROM outbox ORDER BY seq LIMIT ?", (limit,))
            rows = await cursor.fetchall()
        # bodies written before reports were stored encoded are TEXT
        return [
            (int(seq), body if isinstance(body, bytes) else body.encode()) for seq, body in rows
        ]

    async def pending_count(self) -> int:
        async with self._step("count the outbox") as db:
            row = await (await db.execute("SELECT COUNT(*) FROM outbox")).fetchone()
        return int(row[0]) if row else 0

    async def ack(self, seq: int, applied: Mapping[str, int]) -> None:
        """Drop an acknowledged report and raise the applied lease totals, in one transaction."""
        async with self._writing("acknowledge a report in the journal") as db:
            await db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            await self._raise_applied(db, applied)

    async def applied(self, applied: Mapping[str, int]) -> None:
        """Raise the applied lease totals of leases pushed outside any report.

        A stream waits on this write after a purchase, so it is one statement that
        commits itself: one trip to the connection's thread, not three
        (BEGIN, the rows, COMMIT), as durable as a transaction's commit.
        """
        async with self._step("record pushed leases in the journal") as db:
            await db.execute(_RAISE_APPLIED_ALONE, (json.dumps(dict(applied)),))

    @staticmethod
    async def _raise_applied(db: aiosqlite.Connection, applied: Mapping[str, int]) -> None:
        await db.executemany(  # one trip to the connection's thread for all agents
            "INSERT INTO leases (agent_id, applied_total) VALUES (?, ?) "
            "ON CONFLICT(agent_id) DO UPDATE SET "
            "applied_total = MAX(applied_total, excluded.applied_total)",
            list(applied.items()),
        )

    async def drop(self, dropped: Mapping[str, int]) -> None:
        """Count expired leases' unused bytes as given back, without reporting them."""
        async with self._writing("record expired leases in the journal") as db:
            await db.executemany(
                "INSERT INTO leases (agent_id, returned_total) VALUES (?, ?) "
                "ON CONFLICT(agent_id) DO UPDATE SET returned_total = returned_total + ?",
                [(a, n, n) for a, n in dropped.items()],
            )

    async def leases(self) -> dict[str, HeldLease]:
        async with self._step("read the lease totals") as db:
            cursor = await db.execute(
                "SELECT agent_id, applied_total, used_total, returned_total FROM leases"
            )
            rows = await cursor.fetchall()
        return {
            row[0]: HeldLease(
                agent_id=row[0], applied_total=row[1], used_total=row[2], returned_total=row[3]
            )
            for row in rows
        }

    async def save_agents(self, agents: list[dict[str, Any]]) -> None:
        async with self._writing("cache the agent registry in the journal") as db:
            await db.execute(
                "INSERT INTO agents_cache (id, body) VALUES (1, ?) "
                "ON CONFLICT(id) DO UPDATE SET body = excluded.body",
                (json.dumps(agents),),
            )

    async def load_agents(self) -> list[dict[str, Any]] | None:
        async with self._step("read the agent cache") as db:
            cursor = await db.execute("SELECT body FROM agents_cache WHERE id = 1")
            row = await cursor.fetchone()
        return None if row is None else list(json.loads(row[0]))
