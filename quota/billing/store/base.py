"""What every billing store offers, whichever database is behind it.

Invariants:
- Statements are written once, in the SQL both databases speak, with `?`
  placeholders; a store translates what its database spells differently
  (`$1` placeholders, how an INSERT returns its new id, error codes), and
  nothing else.
- Every write happens inside `Store.transaction()`: committed whole, or rolled
  back on any error (also on cancellation). Transactions are serializable: the
  result is the same as if they had run one after another.
- Database errors never leave a store: they become `StoreError`, or
  `VersionConflict` when another transaction won a race (busy, serialization
  failure, deadlock, a key inserted meanwhile); callers run the whole
  operation again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any

Row = tuple[Any, ...]
POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")


def is_postgresql(database: str) -> bool:
    """Whether `server.database` names PostgreSQL (a URL) rather than a SQLite file."""
    return database.startswith(POSTGRESQL_SCHEMES)


class Tx(ABC):
    """Statements of one open transaction."""

    @abstractmethod
    async def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute a write; return the number of rows it changed."""

    @abstractmethod
    async def run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Execute one write for each row of parameters, in one trip to the database."""

    @abstractmethod
    async def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute an INSERT into a table with an `id` column it numbers; return the new id."""

    @abstractmethod
    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """The rows of a query."""

    async def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.all(sql, params)
        return rows[0] if rows else None


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
