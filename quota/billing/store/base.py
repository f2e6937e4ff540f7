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
from types import TracebackType
from typing import Any

Row = tuple[Any, ...]
POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")


def is_postgresql(database: str) -> bool:
    """Whether `server.database` names PostgreSQL (a URL) rather than a SQLite file."""
    return database.startswith(POSTGRESQL_SCHEMES)


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
