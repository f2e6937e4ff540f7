"""The billing store: SQLite (the embedded default) or PostgreSQL (for replicas), one interface.

Invariants:
- `server.database` chooses: a `postgresql://` (or `postgres://`) URL opens
  PostgreSQL, anything else is the path of a SQLite file.
- Everything above the store speaks to `Store` and `Tx` (`base`) only; all SQL
  lives in this package (schema, store mechanics) and in `quota.billing.repo`.
"""

from __future__ import annotations

from pathlib import Path

from quota.billing.store.base import Bulk, Row, Store, Tx, is_postgresql
from quota.billing.store.postgres import PgStore
from quota.billing.store.sqlite import SqliteStore

__all__ = [
    "Bulk",
    "PgStore",
    "Row",
    "SqliteStore",
    "Store",
    "Tx",
    "is_postgresql",
    "open_store",
]


def open_store(database: str | Path) -> Store:
    """The store `database` names (not yet open: use `async with`)."""
    if isinstance(database, str) and is_postgresql(database):
        return PgStore(database)
    return SqliteStore(Path(database))
