"""The PostgreSQL store, for replicas: a pool of asyncpg connections, serializable transactions.

Invariants:
- Every transaction is SERIALIZABLE, so several billing processes on one
  database give the same results as SQLite's one writer at a time; a
  serialization failure, a deadlock or a key another transaction inserted
  first becomes `VersionConflict`, and the runner runs the operation again.
- Within one process write transactions take turns (as on SQLite's one
  connection): the races left are between replicas, a few at a time, so a
  retried operation does not meet a crowd again. Reads (`reading`) run beside
  them on the pool's other connections, from a snapshot that cannot conflict.
- Statements arrive in the SQL both stores speak: `?` placeholders (never
  inside a string literal) become `$1, $2, ...` here, and `insert` asks for the
  new id with `RETURNING id`; nothing else is rewritten.
- Migrations run in one transaction under an advisory lock, so replicas that
  start together migrate once; `schema_version` holds the versions applied.
- Ledger ids follow commit order: a transaction takes a transaction-scoped
  advisory lock before its first ledger row (`before_ledger`), so a reader
  paging by id never sees a higher id before a lower one is committed.
- `announce` is a `pg_notify` in the announcing transaction, so it is
  delivered when (and only if) that transaction commits, to every process
  holding `fan_out` open (its own included: the receiver filters) on its own
  connection, in commit order. A lost LISTEN connection is opened again with
  backoff (`billing_fan_out_lost`, then `billing_fan_out_restored`); what was
  announced in between is not heard, and relays learn it at their next sync.
- asyncpg errors never leave this module, and the URL in a message never
  carries its password. Text PostgreSQL cannot hold (a NUL character, which
  SQLite keeps) is the client's error: 400, not 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import random
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import asyncpg
import structlog

from quota.billing.errors import BadRequest, StoreError, VersionConflict
from quota.billing.store.base import Bulk, Row, Store, Tx
from quota.billing.store.schema import POSTGRESQL
from quota.core.backoff import backoff_ms

CHANNEL = "quotarelay_push"
POOL_SIZE = 10  # connections per process; each transaction holds one
CONNECT_TIMEOUT_S = 10
log = structlog.get_logger("quota.billing")
_MIGRATION_LOCK = 0x71756F7461  # "quota": the advisory lock key replicas migrate under
_LEDGER_LOCK = 0x6C6564676572  # "ledger": ledger writers of all replicas take turns under it
_RACES = (
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.UniqueViolationError,
)
_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@functools.lru_cache(maxsize=1024)
def numbered(sql: str) -> str:
    """`sql` with its `?` placeholders written `$1, $2, ...`."""
    pieces = sql.split("?")
    out = [pieces[0]]
    for n, piece in enumerate(pieces[1:], start=1):
        out.append(f"${n}{piece}")
    return "".join(out)


def _translate(exc: BaseException) -> Exception:
    if isinstance(exc, _RACES):
        return VersionConflict(f"concurrent write: {exc}")
    if isinstance(exc, asyncpg.CharacterNotInRepertoireError):  # text PostgreSQL cannot hold
        return BadRequest("a text field holds a NUL character, which cannot be stored")
    return StoreError(f"database error: {exc}")


def _count(status: str) -> int:
    """Rows changed, from a command status such as `UPDATE 3` or `INSERT 0 1`."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


@functools.lru_cache(maxsize=256)
def _unnest(bulk: Bulk) -> str:
    """`unnest($1::type[], ...) AS v(columns)`: one array parameter per column."""
    arrays = ", ".join(f"${n}::{t}[]" for n, t in enumerate(bulk.types, start=1))
    return f"unnest({arrays}) AS v({', '.join(bulk.columns)})"


@functools.lru_cache(maxsize=256)
def _insert_sql(bulk: Bulk) -> str:
    cols = ", ".join(bulk.columns)
    return f"INSERT INTO {bulk.table} ({cols}) SELECT {cols} FROM {_unnest(bulk)} {bulk.conflict}"


@functools.lru_cache(maxsize=256)
def _update_sql(bulk: Bulk) -> str:
    sets = [f"{c} = v.{c}" for c in bulk.values] + ([bulk.also] if bulk.also else [])
    where = " AND ".join(f"{bulk.table}.{k} = v.{k}" for k in bulk.key)
    return f"UPDATE {bulk.table} SET {', '.join(sets)} FROM {_unnest(bulk)} WHERE {where}"


def _columns(bulk: Bulk, rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in bulk.columns]


class PgTx(Tx):
    """Statements of one open PostgreSQL transaction."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        super().__init__()
        self._conn = conn
        self._ledger_turn = False

    async def before_ledger(self) -> None:
        # Identity ids are drawn at insert, but commits may land in another order: a
        # reader paging by id would skip an id that commits after a higher one. Held to
        # the commit, this lock makes ledger ids follow commit order across replicas.
        if not self._ledger_turn:
            await self.run("SELECT pg_advisory_xact_lock(?)", (_LEDGER_LOCK,))
            self._ledger_turn = True

    async def _run(self, sql: str, params: Sequence[Any]) -> int:
        try:
            return _count(await self._conn.execute(numbered(sql), *params))
        except _ERRORS as exc:
            raise _translate(exc) from exc

    async def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:  # asyncpg pipelines the rows: one round trip's wait for all of them
            await self._conn.executemany(numbered(sql), rows)
        except _ERRORS as exc:
            raise _translate(exc) from exc

    def in_ids(self, column: str, ids: Sequence[str]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?::text[])", [list(ids)]

    async def _insert_rows(self, bulk: Bulk, rows: Sequence[Sequence[Any]]) -> None:
        try:
            if bulk.conflict:  # one statement, one array per column, whatever the rows
                await self._conn.execute(_insert_sql(bulk), *_columns(bulk, rows))
            else:  # rows only added: COPY, the quickest way in (CHECKs and triggers apply)
                await self._conn.copy_records_to_table(
                    bulk.table, records=rows, columns=list(bulk.columns)
                )
        except _ERRORS as exc:
            raise _translate(exc) from exc

    async def _update_rows(self, bulk: Bulk, rows: Sequence[Sequence[Any]]) -> int:
        try:
            return _count(await self._conn.execute(_update_sql(bulk), *_columns(bulk, rows)))
        except _ERRORS as exc:
            raise _translate(exc) from exc

    async def _insert(self, sql: str, params: Sequence[Any]) -> int:
        try:
            return int(await self._conn.fetchval(numbered(sql) + " RETURNING id", *params))
        except _ERRORS as exc:
            raise _translate(exc) from exc

    async def _all(self, sql: str, params: Sequence[Any]) -> list[Row]:
        try:
            return [tuple(r) for r in await self._conn.fetch(numbered(sql), *params)]
        except _ERRORS as exc:
            raise _translate(exc) from exc


class PgStore(Store):
    """The billing database in PostgreSQL, shared by any number of billing processes."""

    kind = "postgresql"

    def __init__(self, url: str, *, pool_size: int = POOL_SIZE) -> None:
        self.url = url
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._writer = asyncio.Lock()

    @property
    def schema_version(self) -> int:
        return len(POSTGRESQL)

    async def __aenter__(self) -> PgStore:
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=self._pool_size, timeout=CONNECT_TIMEOUT_S
            )
        except (*_ERRORS, ValueError, TimeoutError) as exc:
            raise StoreError(f"cannot open {redacted(self.url)}: {exc}") from exc
        try:
            await self._migrate(self._pool)
        except _ERRORS as exc:
            await self._close()
            raise StoreError(f"cannot migrate {redacted(self.url)}: {exc}") from exc
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), CONNECT_TIMEOUT_S)
            except (*_ERRORS, TimeoutError):
                pool.terminate()  # a connection that hangs must not hold the shutdown

    @staticmethod
    async def _migrate(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)"
            )
            version = int(
                await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            )
            for number, script in enumerate(POSTGRESQL[version:], start=version + 1):
                await conn.execute(script)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", number)

    @asynccontextmanager
    async def _open(self, isolation: str, readonly: bool) -> AsyncIterator[Tx]:
        if self._pool is None:
            raise StoreError("store is not open")
        pool = self._pool
        try:
            conn = await pool.acquire(timeout=CONNECT_TIMEOUT_S)
        except (*_ERRORS, TimeoutError) as exc:
            raise StoreError(f"no connection to {redacted(self.url)}: {exc}") from exc
        try:
            async with self._in_transaction(conn, isolation, readonly) as tx:
                yield tx
        finally:
            await asyncio.shield(pool.release(conn))

    @asynccontextmanager
    async def _in_transaction(
        self, conn: asyncpg.Connection, isolation: str, readonly: bool
    ) -> AsyncIterator[Tx]:
        transaction = conn.transaction(isolation=isolation, readonly=readonly)
        try:
            await transaction.start()
        except _ERRORS as exc:
            raise _translate(exc) from exc
        tx = PgTx(conn)
        try:
            yield tx
            await tx.flush()  # the held writes belong to this transaction
        except BaseException:
            await asyncio.shield(self._rollback(transaction))
            raise
        try:
            await transaction.commit()
        except _ERRORS as exc:
            await asyncio.shield(self._rollback(transaction))
            raise _translate(exc) from exc

    @staticmethod
    async def _rollback(transaction: Any) -> None:
        with contextlib.suppress(*_ERRORS):  # the connection is gone: nothing was committed
            await transaction.rollback()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self._writer, self._open("serializable", readonly=False) as tx:
            yield tx

    def reading(self) -> contextlib.AbstractAsyncContextManager[Tx]:
        # a snapshot that writes nothing never conflicts: no serialization failure to retry
        return self._open("repeatable_read", readonly=True)

    def announce(self, tx: Tx, payload: str) -> None:
        tx.later("SELECT pg_notify(?, ?)", (CHANNEL, payload))

    @asynccontextmanager
    async def fan_out(self, deliver: Callable[[str], None]) -> AsyncIterator[None]:
        listener = _Listener(self.url, deliver)
        await listener.connect()  # the first connection must work: the caller learns at start
        async with asyncio.TaskGroup() as tasks:
            task = tasks.create_task(listener.keep(), name="billing-fan-out")
            try:
                yield
            finally:
                task.cancel()
                await listener.close()


class _Listener:
    """One LISTEN connection, opened again (with backoff) whenever it is lost."""

    def __init__(self, url: str, deliver: Callable[[str], None]) -> None:
        self.url = url
        self.deliver = deliver
        self.conn: asyncpg.Connection | None = None
        self.lost = asyncio.Event()

    def _heard(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.deliver(payload)

    def _lost(self, _conn: Any) -> None:
        # until it is back, relays of this replica learn of other replicas' changes at
        # their next sync or registry refresh
        log.warning("billing_fan_out_lost", database=redacted(self.url))
        self.lost.set()

    async def connect(self) -> None:
        try:
            conn = await asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT_S)
        except (*_ERRORS, ValueError, TimeoutError) as exc:
            raise StoreError(f"cannot listen on {redacted(self.url)}: {exc}") from exc
        try:
            await conn.add_listener(CHANNEL, self._heard)
        except _ERRORS as exc:
            await self._drop(conn)
            raise StoreError(f"cannot listen on {redacted(self.url)}: {exc}") from exc
        self.lost.clear()
        conn.add_termination_listener(self._lost)
        self.conn = conn

    async def keep(self) -> None:
        """Wait for the connection to be lost, then connect again until it works."""
        while True:
            await self.lost.wait()
            await self.close()
            for attempt in itertools.count():
                wait_ms = backoff_ms(attempt, first_ms=100, cap_ms=5_000, draw=random.random())
                await asyncio.sleep(wait_ms / 1000)
                try:
                    await self.connect()
                except StoreError as exc:
                    log.warning("billing_fan_out_retry", error=str(exc), attempt=attempt + 1)
                    continue
                log.info("billing_fan_out_restored", database=redacted(self.url))
                break

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.remove_termination_listener(self._lost)
            await self._drop(conn)

    @staticmethod
    async def _drop(conn: asyncpg.Connection) -> None:
        try:
            await asyncio.wait_for(conn.close(), CONNECT_TIMEOUT_S)
        except (*_ERRORS, TimeoutError):
            conn.terminate()
