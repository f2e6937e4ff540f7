"""The SQLite store, the embedded default: one long-lived aiosqlite connection, WAL.

Invariants:
- Every write happens inside `Store.transaction()`: `BEGIN IMMEDIATE` ... `COMMIT`,
  or `ROLLBACK` on any error (also on cancellation), so a request changes all it
  means to or nothing. One transaction at a time runs on the connection, and
  `BEGIN IMMEDIATE` takes the database's one write lock: serializable.
- Durable: WAL with `synchronous=FULL`, so a committed transaction survives a
  power loss (NORMAL would only survive a crash of the process).
- Lookups that must never wait for a writer (`peek`: the token check of every
  request) run on a second, read-only connection outside any write
  transaction; in WAL mode they read the last committed state.
- Ledger rows can be neither updated nor deleted (triggers refuse it) and a
  balance can never go below zero (a CHECK refuses it).
- aiosqlite/sqlite3 errors never leave this module: they become `StoreError`,
  or `VersionConflict` when the database was busy (another replica wrote), which
  callers retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite

from quota.billing.errors import StoreError, VersionConflict
from quota.billing.store.base import Bulk, Row, Store, Tx
from quota.billing.store.schema import SQLITE
from quota.private_files import private_database
from quota.sqlite_open import join_worker


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower():
        return VersionConflict(f"database busy: {exc}")
    return StoreError(f"database error: {exc}")


def _insert_sql(bulk: Bulk) -> str:
    marks = ", ".join("?" * len(bulk.columns))
    return f"INSERT INTO {bulk.table} ({', '.join(bulk.columns)}) VALUES ({marks}) {bulk.conflict}"


def _update_sql(bulk: Bulk) -> str:
    sets = [f"{c} = ?" for c in bulk.values] + ([bulk.also] if bulk.also else [])
    where = " AND ".join(f"{k} = ?" for k in bulk.key)
    return f"UPDATE {bulk.table} SET {', '.join(sets)} WHERE {where}"


class SqliteTx(Tx):
    """Statements of one open SQLite transaction."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        super().__init__()
        self._conn = conn

    async def _run(self, sql: str, params: Sequence[Any]) -> int:
        try:
            cursor = await self._conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise _translate(exc) from exc
        return cursor.rowcount

    async def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:  # one trip to the connection's thread for all rows
            await self._conn.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    def in_ids(self, column: str, ids: Sequence[str]) -> tuple[str, list[Any]]:
        # one JSON array bound once: no limit on bound parameters, one statement
        return f"{column} IN (SELECT value FROM json_each(?))", [json.dumps(list(ids))]

    async def _insert_rows(self, bulk: Bulk, rows: Sequence[Sequence[Any]]) -> None:
        await self._many(_insert_sql(bulk), rows)

    async def _update_rows(self, bulk: Bulk, rows: Sequence[Sequence[Any]]) -> int:
        try:  # one trip to the connection's thread; rowcount sums over all rows
            cursor = await self._conn.executemany(_update_sql(bulk), rows)
        except sqlite3.Error as exc:
            raise _translate(exc) from exc
        return cursor.rowcount

    async def _insert(self, sql: str, params: Sequence[Any]) -> int:
        try:
            cursor = await self._conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise _translate(exc) from exc
        return int(cursor.lastrowid or 0)

    async def _all(self, sql: str, params: Sequence[Any]) -> list[Row]:
        try:  # one trip to the connection's thread: execute and fetch together
            return [tuple(r) for r in await self._conn.execute_fetchall(sql, params)]
        except sqlite3.Error as exc:
            raise _translate(exc) from exc


class SqliteStore(Store):
    """The billing database in one SQLite file."""

    kind = "sqlite"

    def __init__(self, path: Path, *, synchronous: str = "FULL") -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise StoreError(f"synchronous: FULL or NORMAL, not {synchronous!r}")
        self.path = path
        self.synchronous = synchronous  # NORMAL only for the bench's comparison
        self._conn: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> SqliteStore:
        try:
            private_database(self.path)
        except OSError as exc:
            raise StoreError(f"cannot create {self.path}: {exc.strerror}") from exc
        pending = aiosqlite.connect(self.path, isolation_level=None)
        try:
            self._conn = await pending
        except sqlite3.Error as exc:
            await join_worker(pending)
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        try:
            for pragma in (
                "journal_mode=WAL",
                # FULL: a commit is on disk (WAL synced) before COMMIT returns, so a
                # credited deposit or a charge survives power loss, not only a crash
                f"synchronous={self.synchronous}",
                "busy_timeout=5000",
                "foreign_keys=ON",
            ):
                await self._conn.execute(f"PRAGMA {pragma}")
            await self._migrate(self._conn)
            self._reader = await self._open_reader()
        except sqlite3.Error as exc:
            await self._close()
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        return self

    async def _open_reader(self) -> aiosqlite.Connection:
        pending = aiosqlite.connect(self.path, isolation_level=None)
        try:
            reader = await pending
        except sqlite3.Error:
            await join_worker(pending)
            raise
        try:
            await reader.execute("PRAGMA query_only=ON")
            await reader.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error:
            await reader.close()
            raise
        return reader

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            with contextlib.suppress(sqlite3.Error):  # it only ever read
                await reader.close()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await conn.close()
            except sqlite3.Error as exc:
                raise StoreError(f"closing {self.path}: {exc}") from exc

    @staticmethod
    async def _migrate(conn: aiosqlite.Connection) -> None:
        async with conn.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = int(row[0]) if row else 0
        for number, script in enumerate(SQLITE[version:], start=version + 1):
            await conn.executescript(
                f"BEGIN IMMEDIATE; {script}; PRAGMA user_version={number}; COMMIT;"
            )

    @property
    def schema_version(self) -> int:
        return len(SQLITE)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """One write transaction: commit on success, roll back on any exception."""
        if self._conn is None:
            raise StoreError("store is not open")
        conn = self._conn
        async with self._lock:
            try:
                await conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _translate(exc) from exc
            tx = SqliteTx(conn)
            try:
                yield tx
                await tx.flush()  # the held writes belong to this transaction
            except BaseException:
                await asyncio.shield(self._rollback(conn))
                raise
            try:
                await conn.execute("COMMIT")
            except sqlite3.Error as exc:
                await asyncio.shield(self._rollback(conn))
                raise _translate(exc) from exc

    @staticmethod
    async def _rollback(conn: aiosqlite.Connection) -> None:
        with contextlib.suppress(sqlite3.Error):  # already gone: nothing was committed
            await conn.execute("ROLLBACK")

    def announce(self, tx: Tx, payload: str) -> None:
        """Nothing: SQLite has no channel between processes (their relays learn at each sync)."""

    @asynccontextmanager
    async def peek(self) -> AsyncIterator[Tx]:
        """Single-statement reads on the read-only connection: no lock, no write transaction."""
        if self._reader is None:
            raise StoreError("store is not open")
        yield SqliteTx(self._reader)

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[Tx]:
        """Reads of a consistent snapshot (a transaction that writes nothing)."""
        async with self.transaction() as tx:
            yield tx
