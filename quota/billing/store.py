"""The SQLite store: one long-lived aiosqlite connection, WAL, migrations, transactions.

Invariants:
- Every write happens inside `Store.transaction()`: `BEGIN IMMEDIATE` ... `COMMIT`,
  or `ROLLBACK` on any error (also on cancellation), so a request changes all it
  means to or nothing. One transaction at a time runs on the connection.
- Ledger rows can be neither updated nor deleted (triggers refuse it) and a
  balance can never go below zero (a CHECK refuses it).
- aiosqlite/sqlite3 errors never leave this module: they become `StoreError`,
  or `VersionConflict` when the database was busy (another replica wrote), which
  callers retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite

from quota.billing.errors import StoreError, VersionConflict
from quota.private_files import private_database
from quota.sqlite_open import join_worker

_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE accounts (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        balance INTEGER NOT NULL CHECK (balance >= 0),
        version INTEGER NOT NULL,
        frozen INTEGER NOT NULL DEFAULT 0,
        frozen_reason TEXT,
        low_notice_at INTEGER,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts(id),
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        plan TEXT,
        active INTEGER NOT NULL DEFAULT 0,
        lapsed INTEGER NOT NULL DEFAULT 0,
        active_until INTEGER,
        auto_renew INTEGER NOT NULL DEFAULT 1,
        allow_metered INTEGER NOT NULL DEFAULT 0,
        bucket_bytes INTEGER NOT NULL DEFAULT 0 CHECK (bucket_bytes >= 0),
        package_bytes INTEGER NOT NULL DEFAULT 0 CHECK (package_bytes >= 0),
        metered_carry INTEGER NOT NULL DEFAULT 0,
        time_carry INTEGER NOT NULL DEFAULT 0,
        topup_package TEXT,
        topup_limit INTEGER NOT NULL DEFAULT 0,
        topup_spent INTEGER NOT NULL DEFAULT 0,
        topup_below INTEGER NOT NULL DEFAULT 0,
        topup_blocked INTEGER NOT NULL DEFAULT 0,
        topup_since INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        UNIQUE (account_id, name)
    );
    CREATE TABLE agent_keys (
        id TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL REFERENCES agents(id),
        public_key TEXT NOT NULL,
        revoked_at INTEGER
    );
    CREATE TABLE ledger (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        account_id TEXT NOT NULL REFERENCES accounts(id),
        agent_id TEXT,
        kind TEXT NOT NULL,
        amount INTEGER NOT NULL,
        balance_after INTEGER NOT NULL CHECK (balance_after >= 0),
        traffic_bytes INTEGER NOT NULL,
        used_bytes INTEGER NOT NULL,
        idempotency_key TEXT NOT NULL,
        reason TEXT NOT NULL,
        at INTEGER NOT NULL
    );
    CREATE INDEX ledger_account ON ledger (account_id, id);
    CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
        BEGIN SELECT RAISE(ABORT, 'ledger entries are immutable'); END;
    CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
        BEGIN SELECT RAISE(ABORT, 'ledger entries are immutable'); END;
    CREATE TABLE idempotency (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        status INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (scope, key)
    );
    CREATE TABLE payments (
        payment_id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        amount INTEGER NOT NULL,
        status TEXT NOT NULL,
        body TEXT NOT NULL,
        at INTEGER NOT NULL
    );
    CREATE TABLE deposit_intents (
        id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts(id),
        amount INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE usage_reports (
        relay_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        body TEXT NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (relay_id, seq)
    );
    CREATE TABLE notices (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        account_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        at INTEGER NOT NULL
    );
    """,
    # 2: relay sync. A report number (relay_id, seq) was shared by the old
    # /v1/usage and /v1/sync (kind), so one number is never applied by both;
    # leases are one relay's cumulative share of one agent's traffic.
    """
    ALTER TABLE usage_reports ADD COLUMN kind TEXT NOT NULL DEFAULT 'usage';
    ALTER TABLE usage_reports ADD COLUMN fingerprint TEXT NOT NULL DEFAULT '';
    CREATE TABLE leases (
        relay_id TEXT NOT NULL,
        agent_id TEXT NOT NULL REFERENCES agents(id),
        granted_total INTEGER NOT NULL DEFAULT 0 CHECK (granted_total >= 0),
        used_total INTEGER NOT NULL DEFAULT 0 CHECK (used_total >= 0),
        returned_total INTEGER NOT NULL DEFAULT 0 CHECK (returned_total >= 0),
        valid_until INTEGER NOT NULL,
        PRIMARY KEY (relay_id, agent_id)
    );
    CREATE INDEX leases_agent ON leases (agent_id, valid_until);
    """,
    # 3: per-tunnel usage, cumulative, so per-agent and per-tunnel totals can be read.
    """
    CREATE TABLE tunnel_usage (
        agent_id TEXT NOT NULL REFERENCES agents(id),
        tunnel_id TEXT NOT NULL,
        bytes INTEGER NOT NULL DEFAULT 0 CHECK (bytes >= 0),
        tunnel_seconds INTEGER NOT NULL DEFAULT 0 CHECK (tunnel_seconds >= 0),
        first_at INTEGER NOT NULL,
        last_at INTEGER NOT NULL,
        PRIMARY KEY (agent_id, tunnel_id)
    );
    """,
)

Row = tuple[Any, ...]


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower():
        return VersionConflict(f"database busy: {exc}")
    return StoreError(f"database error: {exc}")


class Tx:
    """Statements of one open transaction."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute a write; return the number of rows it changed."""
        try:
            cursor = await self._conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise _translate(exc) from exc
        return cursor.rowcount

    async def run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Execute one write for each row of parameters, in one trip to the connection."""
        try:
            await self._conn.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    async def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute an INSERT; return the new row id."""
        try:
            cursor = await self._conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise _translate(exc) from exc
        return int(cursor.lastrowid or 0)

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:  # one trip to the connection's thread: execute and fetch together
            return [tuple(r) for r in await self._conn.execute_fetchall(sql, params)]
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    async def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.all(sql, params)
        return rows[0] if rows else None


class Store:
    """The billing database; use as `async with Store(path) as store`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Store:
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
                "synchronous=NORMAL",
                "busy_timeout=5000",
                "foreign_keys=ON",
            ):
                await self._conn.execute(f"PRAGMA {pragma}")
            await self._migrate(self._conn)
        except sqlite3.Error as exc:
            await self._close()
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
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
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            await conn.executescript(
                f"BEGIN IMMEDIATE; {script}; PRAGMA user_version={number}; COMMIT;"
            )

    @property
    def schema_version(self) -> int:
        return len(_MIGRATIONS)

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
            try:
                yield Tx(conn)
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

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[Tx]:
        """Reads of a consistent snapshot (a transaction that writes nothing)."""
        async with self.transaction() as tx:
            yield tx

    async def ping(self) -> None:
        """Read one row: raises StoreError when the database does not answer (readiness)."""
        async with self.reading() as tx:
            await tx.one("SELECT 1")
