"""What every billing store offers, whichever database is behind it.

Invariants:
- Statements are written once, in the SQL both databases speak, with `?`
  placeholders; a store translates what its database spells differently
  (`$1` placeholders, how an INSERT returns its new id, error codes), and
  nothing else.
- Every write happens inside `Store.transaction()`: committed whole, or rolled
  back on any error (also on cancellation). Transactions are serializable: the
  result is the same as if they had run one after another.
- A write whose answer nobody reads may be sent `later`: it is held, and the
  held writes go out before the transaction's next statement and before its
  commit, each statement's rows as one batch (`run_many`), in the order they
  were held, statements in the order of their first row. Only writes that no
  other held statement depends on are held (each held statement writes a table
  of its own), so the batches leave the database as the statements one by one
  would, in far fewer trips; a held write that fails fails the transaction.
- Set-based statements (`Bulk`: many rows inserted, upserted or updated by
  one statement) are described once, as a table, its typed columns and what a
  conflict does; each store spells them its own way (SQLite: one prepared
  statement run for every row in one call; PostgreSQL: one statement over
  `unnest` of one array per column), so a report of 10,000 agents is a
  handful of statements, not 10,000 round trips.
- Database errors never leave a store: they become `StoreError`, or
  `VersionConflict` when another transaction won a race (busy, serialization
  failure, deadlock, a key inserted meanwhile); callers run the whole
  operation again.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

Row = tuple[Any, ...]
POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")
LEDGER_RELAY_ID = "ledger"  # usage_log rows carried over from the ledger (migration 6)


def is_postgresql(database: str) -> bool:
    """Whether `server.database` names PostgreSQL (a URL) rather than a SQLite file."""
    return database.startswith(POSTGRESQL_SCHEMES)


@dataclass(frozen=True, slots=True, kw_only=True)
class Bulk:
    """One set-based statement over `table`, in the words both stores understand.

    Insert: rows of `columns` (an upsert when `conflict` is the `ON CONFLICT ...`
    clause, which may refer to `excluded.<column>`). Update: `key` columns (the
    last ones of `columns`) pick the row, the other columns are set. `types` are
    the SQL types of the columns, `bigint` or `text`, in the order of `columns`.
    """

    table: str
    columns: tuple[str, ...]
    types: tuple[str, ...]
    conflict: str = ""
    key: tuple[str, ...] = ()
    also: str = ""  # an update's further assignments, e.g. "version = accounts.version + 1"

    def __post_init__(self) -> None:
        assert len(self.columns) == len(self.types), "one type per column"
        assert self.columns[len(self.columns) - len(self.key) :] == self.key, "key comes last"

    @property
    def values(self) -> tuple[str, ...]:
        """The columns an update sets (all but the key)."""
        return tuple(c for c in self.columns if c not in self.key)


class Tx(ABC):
    """Statements of one open transaction; a store implements the underscored ones."""

    def __init__(self) -> None:
        self._held: dict[str, list[Sequence[Any]]] = {}

    def later(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Hold a write nobody reads the answer of, to send with the next statement or commit.

        Only for a statement that writes a table no other held statement touches.
        """
        self._held.setdefault(sql, []).append(params)

    async def flush(self) -> None:
        """Send the held writes: each statement's rows as one batch, in the order held."""
        held, self._held = self._held, {}
        for sql, rows in held.items():
            if len(rows) == 1:
                await self._run(sql, rows[0])
            else:
                await self._many(sql, rows)

    async def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute a write; return the number of rows it changed."""
        await self.flush()
        return await self._run(sql, params)

    async def run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Execute one write for each row of parameters, in one trip to the database."""
        await self.flush()
        if rows:
            await self._many(sql, rows)

    @abstractmethod
    def in_ids(self, column: str, ids: Sequence[str]) -> tuple[str, list[Any]]:
        """`column IN (ids)` as one condition and its one parameter, for any number of ids."""

    async def before_ledger(self) -> None:
        """Call before the first ledger row of a transaction: ids then follow commit order.

        A reader paging the ledger by id must never find a gap filled later. One
        writer at a time (SQLite) gives that already; a store whose transactions
        run side by side makes ledger writers take turns here until they commit.
        """
        return  # one writer at a time: nothing to wait for

    async def insert_rows(self, bulk: Bulk, rows: Sequence[Sequence[Any]]) -> None:
        """Insert (or upsert) `rows` of `bulk.columns` with one set-based statement."""
        await self.flush()
        if rows:
            await self._insert_rows(bulk, rows)

    async def update_rows(self, bulk: Bulk, rows: Sequence[Sequence[Any]]) -> int:
        """Update the rows `bulk.key` names with one set-based statement; rows changed."""
        await self.flush()
        return await self._update_rows(bulk, rows) if rows else 0

    async def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute an INSERT into a table with an `id` column it numbers; return the new id."""
        await self.flush()
        return await self._insert(sql, params)

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """The rows of a query (after the held writes, so it sees them)."""
        await self.flush()
        return await self._all(sql, params)

    async def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.all(sql, params)
        return rows[0] if rows else None

    @abstractmethod
    async def _run(self, sql: str, params: Sequence[Any]) -> int: ...

    @abstractmethod
    async def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    @abstractmethod
    async def _insert(self, sql: str, params: Sequence[Any]) -> int: ...

    @abstractmethod
    async def _insert_rows(self, bulk: Bulk, rows: Sequence[Sequence[Any]]) -> None: ...

    @abstractmethod
    async def _update_rows(self, bulk: Bulk, rows: Sequence[Sequence[Any]]) -> int: ...

    @abstractmethod
    async def _all(self, sql: str, params: Sequence[Any]) -> list[Row]: ...


class Store(ABC):
    """The billing database; use as `async with open_store(database) as store`."""

    kind = ""  # "sqlite" or "postgresql"

    @property
    @abstractmethod
    def schema_version(self) -> int:
        """The number of migrations this code knows (the database is at it once open)."""

    @abstractmethod
    async def __aenter__(self) -> Store: ...

    @abstractmethod
    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        """One serializable transaction: commit on success, roll back on any exception."""

    @abstractmethod
    def reading(self) -> AbstractAsyncContextManager[Tx]:
        """Reads of a consistent snapshot (a transaction that writes nothing)."""

    def peek(self) -> AbstractAsyncContextManager[Tx]:
        """Single-statement reads that never wait for a writer (the token check of a request)."""
        return self.reading()

    async def ping(self) -> None:
        """Read one row: raises StoreError when the database does not answer (readiness)."""
        async with self.reading() as tx:
            await tx.one("SELECT 1")

    @abstractmethod
    def announce(self, tx: Tx, payload: str) -> None:
        """Have `payload` reach every `fan_out` on this database if `tx` commits."""

    def fan_out(self, deliver: Callable[[str], None]) -> AbstractAsyncContextManager[None]:
        """While open, hand `deliver` each payload any process on this database announced."""
        return contextlib.nullcontext()
