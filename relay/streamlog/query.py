"""Read-only queries over the stream log: streams, totals, and a live follow.

Invariants:
- Every query opens its own read-only connection (`mode=ro`): it never creates,
  migrates or writes the file, and it works while the relay writes (WAL: a
  reader sees the last committed flush, never half of one).
- Totals are plain sums over the `streams` rows the same filters select, so
  they equal the sum of `list_streams` over the same filters, to the byte.
- `follow` yields each `stream_events` row once, in id order (the order they
  were written), and never skips a committed row: ids only grow.
- sqlite errors are translated to StreamLogError; a missing file or a file
  that is no stream log says so by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, TypedDict, Unpack

import aiosqlite

from relay.streamlog.record import FIELDS
from relay.streamlog.writer import StreamLogError

PAUSED_BY: tuple[str, ...] = tuple(
    f for f in FIELDS if f.startswith("paused_") and f != "paused_ms"
)

STREAM_COLUMNS: tuple[str, ...] = (
    *FIELDS[2:],
    "closed_at_ms",
    "updated_at_ms",
    "last_event",
)
EVENT_COLUMNS: tuple[str, ...] = ("id", *FIELDS)
_FOLLOW_BATCH = 1000


@asynccontextmanager
async def _reader(path: Path) -> AsyncIterator[aiosqlite.Connection]:
    uri = await asyncio.to_thread(_read_only_uri, path)
    try:
        db = await aiosqlite.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise StreamLogError(f"stream log {path}: cannot open: {exc}") from exc
    try:
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA busy_timeout=5000")
        await db.execute("SELECT version FROM schema_version LIMIT 1")
        yield db
    except sqlite3.Error as exc:
        if "no such table" in str(exc) or "not a database" in str(exc):
            raise StreamLogError(f"not a stream log: {path}") from exc
        raise StreamLogError(f"stream log {path}: cannot read: {exc}") from exc
    finally:
        await db.close()


def _read_only_uri(path: Path) -> str:
    if not path.is_file():
        raise StreamLogError(f"stream log not found: {path}")
    return f"{path.resolve().as_uri()}?mode=ro"


def _where(
    *,
    since_clause: str | None,
    agent: str | None = None,
    account: str | None = None,
    tunnel: str | None = None,
    since_ms: int | None = None,
    open_only: bool = False,
    paused_only: bool = False,
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (("agent_id", agent), ("account", account), ("tunnel_id", tunnel)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if since_ms is not None and since_clause is not None:
        clauses.append(since_clause)
        params.extend([since_ms] * since_clause.count("?"))
    if paused_only:
        clauses.append("state = 'paused'")
    elif open_only:
        clauses.append("state <> 'closed'")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


class StreamFilters(TypedDict, total=False):
    """The filters `list_streams` and `totals` share (None or absent: no filter)."""

    agent: str | None
    account: str | None
    tunnel: str | None
    since_ms: int | None
    open_only: bool
    paused_only: bool


# A stream counts as "since T" when it was alive at any time from T on.
_STREAM_SINCE = "(closed_at_ms IS NULL OR closed_at_ms >= ?)"


async def list_streams(
    path: Path, *, limit: int = 1000, **filters: Unpack[StreamFilters]
) -> list[dict[str, Any]]:
    """The latest state of the `limit` most recently opened matching streams, oldest first.

    `since_ms` keeps streams alive at any time from then on (still open, or closed
    after it); `open_only` keeps streams not closed (open or paused);
    `paused_only` keeps paused streams.
    """
    where, params = _where(since_clause=_STREAM_SINCE, **filters)
    query = (
        f"SELECT {', '.join(STREAM_COLUMNS)} FROM streams{where}"
        " ORDER BY opened_at_ms DESC, stream_id DESC LIMIT ?"
    )
    async with _reader(path) as db, db.execute(query, [*params, max(0, limit)]) as cur:
        rows = await cur.fetchall()
    return [dict(row) for row in reversed(list(rows))]


async def totals(
    path: Path,
    *,
    by: Literal["agent", "tunnel"],
    limit: int = 1000,
    **filters: Unpack[StreamFilters],
) -> list[dict[str, Any]]:
    """Per-agent or per-tunnel sums over the streams the filters select, largest first."""
    if by == "agent":
        keys, extra = "account, agent_id", ""
    elif by == "tunnel":
        keys, extra = "tunnel_id, account, agent_id", "max(kind) AS kind, max(target) AS target, "
    else:
        raise ValueError(f"totals: by must be 'agent' or 'tunnel', got {by!r}")
    where, params = _where(since_clause=_STREAM_SINCE, **filters)
    query = (
        f"SELECT {keys}, {extra}count(*) AS streams,"
        " sum(state <> 'closed') AS open_streams,"
        " sum(bytes_up) AS bytes_up, sum(bytes_down) AS bytes_down,"
        " sum(bytes_up + bytes_down) AS bytes_total, sum(bytes_dropped) AS bytes_dropped,"
        " sum(pauses) AS pauses, sum(paused_ms) AS paused_ms, "
        + ", ".join(f"sum({f}) AS {f}" for f in PAUSED_BY)
        + f" FROM streams{where} GROUP BY {keys}"
        f" ORDER BY bytes_total DESC, {keys} LIMIT ?"
    )
    async with _reader(path) as db, db.execute(query, [*params, max(0, limit)]) as cur:
        rows = await cur.fetchall()
    return [dict(row) for row in rows]


async def last_event_id(path: Path) -> int:
    """The id of the newest event written so far (0 when there is none)."""
    async with _reader(path) as db:
        return await _max_id(db)


def follow(
    path: Path,
    *,
    after_id: int | None = None,
    poll_ms: int = 200,
    agent: str | None = None,
    account: str | None = None,
    tunnel: str | None = None,
    since_ms: int | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """Yield matching events as they are written, in order, forever.

    Starts after event `after_id`; when it is None, starts at the end of the log
    as it is when `follow` is called (only newer events), or, when `since_ms` is
    given, at the first event from then. The start is fixed here, not at the
    first iteration: events committed between the call and the first `anext`
    are yielded, never skipped.
    """
    if after_id is None:
        after_id = 0 if since_ms is not None else _newest_id_now(path)
    where, params = _where(
        agent=agent,
        account=account,
        tunnel=tunnel,
        since_clause="at_ms >= ?",
        since_ms=since_ms,
    )
    where = (where + " AND" if where else " WHERE") + " id > ?"
    query = f"SELECT {', '.join(EVENT_COLUMNS)} FROM stream_events{where} ORDER BY id LIMIT ?"
    return _poll(path, query, params, after_id, poll_ms)


async def _poll(
    path: Path, query: str, params: list[Any], after_id: int, poll_ms: int
) -> AsyncGenerator[dict[str, Any], None]:
    async with _reader(path) as db:
        while True:
            async with db.execute(query, [*params, after_id, _FOLLOW_BATCH]) as cur:
                rows = list(await cur.fetchall())
            for row in rows:
                after_id = int(row["id"])
                yield dict(row)
            if len(rows) < _FOLLOW_BATCH:
                await asyncio.sleep(max(1, poll_ms) / 1000)


def _newest_id_now(path: Path) -> int:
    """The newest event id, read at once (one short read-only query)."""
    try:
        with contextlib.closing(sqlite3.connect(_read_only_uri(path), uri=True)) as db:
            row = db.execute("SELECT coalesce(max(id), 0) FROM stream_events").fetchone()
    except sqlite3.Error as exc:
        if "no such table" in str(exc) or "not a database" in str(exc):
            raise StreamLogError(f"not a stream log: {path}") from exc
        raise StreamLogError(f"stream log {path}: cannot read: {exc}") from exc
    return int(row[0]) if row is not None else 0


async def _max_id(db: aiosqlite.Connection) -> int:
    async with db.execute("SELECT coalesce(max(id), 0) FROM stream_events") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row is not None else 0
