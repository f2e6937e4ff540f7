"""The stream log writer: every stream's life, batched into SQLite and JSON lines.

Invariants:
- `StreamLog.record` only appends to an in-memory queue: it never awaits, never
  does I/O and never raises, so pumps may call it on the hot path.
- One flush writes everything queued in one transaction: one `stream_events`
  row per record (append-only, autoincrement id, so readers can follow it) and
  an upsert of the stream's `streams` row. Records of one stream carry
  cumulative figures, so the latest record wins; byte and pause counters never
  go down (`max`), and a closed row is final.
- A failed flush keeps its records queued (in order) for the next one; past
  `max_pending` queued records the oldest are dropped and counted in `lost`.
- JSON lines are rendered with a private structlog pipeline (never the global
  `configure()`) after the rows are committed; the timestamp is the record's
  own `at_ms`. The database is the record of truth, the lines are a copy.
- On entry every stream of this relay still open or paused (left by a crash)
  is closed with reason "relay_restart"; where the quota agent's journal covers
  the crashed run, streams get the bytes its reports counted
  (relay.streamlog.restart), else they keep the last figures written.
- The database (with its -wal and -shm files) and the JSON lines file are
  created with mode 0600, their folders 0700 (`quota.private_files`).
- On exit the flush task is stopped, everything queued is written and the
  database is closed, even when the exit is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path
from typing import IO, Any, TypeVar

import aiosqlite
import structlog
from structlog.typing import EventDict, WrappedLogger

from quota.agent.journal import JournaledStreams
from quota.private_files import open_private_append, private_database
from relay.errors import RelayError
from relay.streamlog.record import _MIGRATIONS, FIELDS, StreamRecord
from relay.streamlog.restart import restart_records, run_start_ms

T = TypeVar("T")

MAX_PENDING = 200_000


class StreamLogError(RelayError):
    """The stream log cannot be opened, read or written; the message says which file."""


_values = attrgetter(*FIELDS)

_INSERT_EVENT = (
    f"INSERT INTO stream_events ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))})"
)
_STREAM_COLUMNS = ("last_event", "updated_at_ms", *FIELDS[2:], "closed_at_ms")
_COUNTERS = (
    "bytes_up",
    "bytes_down",
    "bytes_dropped",
    "pauses",
    *(f for f in FIELDS if f.startswith("paused_")),  # paused_ms and its share per reason
)
_UPSERT_STREAM = (
    f"INSERT INTO streams ({', '.join(_STREAM_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(_STREAM_COLUMNS))})"
    " ON CONFLICT (stream_id) DO UPDATE SET "
    + ", ".join(
        f"{c} = max(streams.{c}, excluded.{c})" if c in _COUNTERS else f"{c} = excluded.{c}"
        for c in _STREAM_COLUMNS
        if c != "stream_id"
    )
    + " WHERE streams.state <> 'closed'"
)
# At restart only: set a stream's row to the record's figures, closed or not, lower or not.
_SET_STREAM = (
    f"INSERT INTO streams ({', '.join(_STREAM_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(_STREAM_COLUMNS))})"
    " ON CONFLICT (stream_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _STREAM_COLUMNS if c != "stream_id")
)
_RESTART_COLUMNS = ", ".join((*FIELDS[2:], "last_event", "closed_at_ms"))


def wall_clock_ms() -> int:
    """Unix epoch milliseconds from the wall clock."""
    return time.time_ns() // 1_000_000


def iso_ms(ms: int) -> str:
    """Render epoch milliseconds as ISO-8601 UTC with milliseconds ("...T16:46:03.120Z")."""
    seconds, millis = divmod(ms, 1000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{millis:03d}Z"


async def finish_shielded(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to its end even if the caller is cancelled meanwhile, then re-cancel."""
    task = asyncio.ensure_future(coro)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancelled = True
        except Exception:
            if not cancelled:
                raise
    if cancelled:
        if not task.cancelled():
            task.exception()  # retrieved: a failure during a cancelled exit is not reported twice
        raise asyncio.CancelledError
    return task.result()


class _LineBuffer:
    """The structlog "logger" at the end of the JSON pipeline: collects rendered lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def msg(self, message: str) -> None:
        self.lines.append(message)

    info = msg


def _timestamp_from_at_ms(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Stamp the line with the event's own time, and put time and event name first."""
    head: EventDict = {"timestamp": iso_ms(event_dict["at_ms"]), "event": event_dict.pop("event")}
    head.update(event_dict)
    return head


class StreamLog:
    """Long-lived writer of the stream log (an async context manager)."""

    def __init__(
        self,
        path: Path,
        *,
        relay_id: str,
        flush_ms: int = 1000,
        json_lines: Path | None = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
        max_pending: int = MAX_PENDING,
        journaled: JournaledStreams | None = None,
    ) -> None:
        self.path = path
        self.relay_id = relay_id
        self._flush_s = max(1, flush_ms) / 1000
        self._json_path = json_lines
        self._clock_ms = clock_ms
        self._max_pending = max(1, max_pending)
        self._journaled = journaled  # what the journal counted of a killed run's streams
        self._pending: deque[StreamRecord] = deque()
        self._db: aiosqlite.Connection | None = None
        self._json_file: IO[str] | None = None
        self._lines = _LineBuffer()
        self._json_logger = structlog.BoundLogger(
            self._lines,
            processors=[_timestamp_from_at_ms, structlog.processors.JSONRenderer()],
            context={},
        )
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._written = 0
        self._lost = 0
        self._queued_total = 0  # records ever queued: the position of the newest
        self._durable_total = 0  # every record at or before this position is committed
        self.last_error: str | None = None  # the last failed write, None once one succeeds

    @property
    def written(self) -> int:
        """Records written to the database so far."""
        return self._written

    @property
    def lost(self) -> int:
        """Records dropped because more than `max_pending` were queued."""
        return self._lost

    @property
    def position(self) -> int:
        """The position of the newest record queued (records are numbered from 1)."""
        return self._queued_total

    @property
    def durable(self) -> int:
        """Every record queued at or before this position is in the database (or was lost)."""
        return self._durable_total

    @property
    def pending(self) -> int:
        """Records queued and not yet written."""
        return len(self._pending)

    def record(self, rec: StreamRecord) -> None:
        """Queue `rec` for the next flush (no I/O, no await, no exception)."""
        if len(self._pending) >= self._max_pending:
            self._pending.popleft()
            self._lost += 1
        self._pending.append(rec)
        self._queued_total += 1

    async def __aenter__(self) -> StreamLog:
        try:
            await self._open()
            await self._close_leftovers()
        except BaseException:
            await finish_shielded(self._close_files())
            raise
        self._task = asyncio.create_task(self._run(), name=f"streamlog-flush-{self.relay_id}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await finish_shielded(self._shutdown())

    async def flush(self) -> None:
        """Write everything queued in one transaction; raise StreamLogError if it fails."""
        async with self._lock:
            if not self._pending or self._db is None:
                return
            batch = list(self._pending)
            self._pending.clear()
            upto = self._queued_total
            try:
                await self._write(self._db, batch)
            except sqlite3.Error as exc:
                self._requeue(batch)
                self.last_error = str(exc)
                raise StreamLogError(f"stream log {self.path}: write failed: {exc}") from exc
            self._durable_total = max(self._durable_total, upto)
            self._written += len(batch)
            self.last_error = None
            if self._json_file is not None or self._json_path == Path("-"):
                await asyncio.to_thread(self._emit_json, batch)

    async def _write(
        self, db: aiosqlite.Connection, batch: list[StreamRecord], upsert: str = _UPSERT_STREAM
    ) -> None:
        events = [_values(rec) for rec in batch]
        streams = [
            (
                rec.event,
                rec.at_ms,
                *row[2:],
                rec.at_ms if rec.state == "closed" else None,
            )
            for rec, row in zip(batch, events, strict=True)
        ]
        try:
            await db.executemany(_INSERT_EVENT, events)
            await db.executemany(upsert, streams)
            await db.commit()
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                await db.rollback()
            raise

    def _requeue(self, batch: list[StreamRecord]) -> None:
        self._pending.extendleft(reversed(batch))
        while len(self._pending) > self._max_pending:
            self._pending.popleft()
            self._lost += 1

    def _emit_json(self, batch: Iterable[StreamRecord]) -> None:
        """Render and append one JSON line per record (runs in a worker thread)."""
        for rec in batch:
            values = {name: getattr(rec, name) for name in FIELDS[1:]}
            self._json_logger.info(f"stream_{rec.event}", **values)
        text = "".join(line + "\n" for line in self._lines.lines)
        self._lines.lines.clear()
        out = self._json_file if self._json_file is not None else sys.stderr
        try:
            out.write(text)
            out.flush()
        except (OSError, ValueError) as exc:
            structlog.get_logger().warning("stream_log_json_failed", error=str(exc))

    async def _open(self) -> None:
        try:
            self._json_file = await asyncio.to_thread(self._prepare_files)
            self._db = await aiosqlite.connect(self.path)
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.execute("PRAGMA synchronous=NORMAL")
            await self._db.execute("PRAGMA busy_timeout=5000")
            await self._migrate(self._db)
        except (sqlite3.Error, OSError) as exc:
            raise StreamLogError(f"stream log {self.path}: cannot open: {exc}") from exc

    def _prepare_files(self) -> IO[str] | None:
        """Create the private files; open the JSON lines file to append (None: none or stderr)."""
        private_database(self.path)
        if self._json_path is None or self._json_path == Path("-"):
            return None
        return open_private_append(self._json_path)

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        async with db.execute("SELECT max(version) FROM schema_version") as cur:
            row = await cur.fetchone()
        current = int(row[0]) if row is not None and row[0] is not None else 0
        if current > len(_MIGRATIONS):
            raise StreamLogError(
                f"stream log {self.path}: schema version {current} is newer than this"
                f" program knows ({len(_MIGRATIONS)})"
            )
        for version in range(current + 1, len(_MIGRATIONS) + 1):
            await db.executescript(
                f"BEGIN; {_MIGRATIONS[version - 1]}"
                f" INSERT INTO schema_version (version) VALUES ({version}); COMMIT;"
            )

    async def _close_leftovers(self) -> None:
        """Close the streams a crashed run left open; give them the bytes its journal counted."""
        assert self._db is not None
        try:
            rows = await self._restart_rows(self._db)
            records = restart_records(rows, self._journaled, self.relay_id, self._clock_ms())
            if records:
                await self._write(self._db, records, upsert=_SET_STREAM)
        except sqlite3.Error as exc:
            raise StreamLogError(f"stream log {self.path}: cannot close leftovers: {exc}") from exc
        self._written += len(records)
        if not records:
            return
        structlog.get_logger().info(
            "stream_log_restart",
            closed=sum(r.event == "close" for r in records),
            corrected=sum(r.event == "corrected" for r in records),
            journal=self._journaled is not None,
        )
        if self._json_file is not None or self._json_path == Path("-"):
            await asyncio.to_thread(self._emit_json, records)

    async def _restart_rows(self, db: aiosqlite.Connection) -> list[dict[str, Any]]:
        """This relay's open streams, and those of the runs the journal covers it may correct."""
        queries: list[tuple[str, tuple[Any, ...]]] = [("state <> 'closed'", ())]
        journaled = self._journaled
        if journaled is not None and journaled.runs:
            since = min(run_start_ms(run) for run in journaled.runs)
            queries.append(
                ("opened_at_ms >= ? AND closed_at_ms > ?", (since, journaled.settled_ms))
            )
            ids = list(journaled.rows)
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                queries.append((f"stream_id IN ({', '.join('?' * len(chunk))})", tuple(chunk)))
        found: dict[str, dict[str, Any]] = {}
        for where, params in queries:
            query = f"SELECT {_RESTART_COLUMNS} FROM streams WHERE relay_id = ? AND {where}"
            async with db.execute(query, (self.relay_id, *params)) as cur:
                for row in await cur.fetchall():
                    values = dict(
                        zip((*FIELDS[2:], "last_event", "closed_at_ms"), row, strict=True)
                    )
                    found[values["stream_id"]] = values
        return list(found.values())

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._flush_s):
                    await self._stop.wait()
            try:
                await self.flush()
            except StreamLogError as exc:
                structlog.get_logger().warning("stream_log_flush_failed", error=str(exc))

    async def _shutdown(self) -> None:
        self._stop.set()
        task, self._task = self._task, None
        try:
            if task is not None:
                await task
            await self.flush()
        finally:
            await self._close_files()

    async def _close_files(self) -> None:
        db, self._db = self._db, None
        json_file, self._json_file = self._json_file, None
        try:
            if db is not None:
                await db.close()
        finally:
            if json_file is not None:
                json_file.close()
