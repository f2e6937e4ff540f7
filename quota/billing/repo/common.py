"""What every repository module shares: the row type and how id lists are chunked.

Invariant: an `IN (...)` list never binds more than `IN_CHUNK` ids, well under
SQLite's limit on bound parameters, so a report naming any number of agents
is read in a few statements, never refused by the database.
"""

from __future__ import annotations

from collections.abc import Iterator

from quota.billing.store import Row

__all__ = ["IN_CHUNK", "Row", "chunks", "marks"]

IN_CHUNK = 500


def chunks(ids: list[str]) -> Iterator[list[str]]:
    for at in range(0, len(ids), IN_CHUNK):
        yield ids[at : at + IN_CHUNK]


def marks(values: list[str]) -> str:
    """The `?, ?, ...` placeholders of an `IN (...)` list."""
    return ", ".join("?" * len(values))
