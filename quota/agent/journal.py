"""The relay's durable journal: the usage outbox, lease totals and the agent cache.

Invariants:
- A report and the lease totals it moves are written in one transaction, under
  the next sequence number: a report is never half-written, and a number is
  never reused (it survives restarts), so the billing API can apply each once.
- A report leaves the outbox only when the billing API acknowledged it.
- `applied_total` only grows: it is the cumulative lease the billing API
  granted this relay for an agent, as far as this relay has put it in buckets.
- One long-lived aiosqlite connection in WAL mode; closed on exit even when cancelled.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite

from quota.agent.errors import JournalError
from quota.sqlite_open import join_worker

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY, body TEXT NOT NULL, created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    agent_id TEXT PRIMARY KEY,
    applied_total INTEGER NOT NULL DEFAULT 0,
    used_total INTEGER NOT NULL DEFAULT 0,
    returned_total INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS agents_cache (id INTEGER PRIMARY KEY CHECK (id = 1), body TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseTotals:
    agent_id: str
    applied_total: int
    used_total: int
    returned_total: int

    @property
    def remaining(self) -> int:
        return max(0, self.applied_total - self.used_total - self.returned_total)


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    async def __aenter__(self) -> Journal:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        pending = aiosqlite.connect(self.path)
        try:
            self._db = await pending
        except Exception as exc:  # sqlite3 errors never leave this module
            await join_worker(pending)
            raise JournalError(f"cannot open the journal {self.path}: {exc}") from None
        try:
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.execute("PRAGMA synchronous=NORMAL")
            await self._db.executescript(_SCHEMA)
            await self._db.commit()
        except Exception as exc:  # sqlite3 errors never leave this module
            db, self._db = self._db, None
            await asyncio.shield(db.close())
            raise JournalError(f"cannot open the journal {self.path}: {exc}") from None
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.shield(db.close())

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise JournalError("the journal is not open")
        return self._db

    async def append(
        self,
        body: dict[str, Any],
        used: dict[str, int],
        returned: dict[str, int],
        now_ms: int,
    ) -> int:
        """Store one report under the next sequence number, with its lease totals."""
        db = self.db
        try:
            await db.execute("BEGIN IMMEDIATE")
            row = await (
                await db.execute("SELECT value FROM meta WHERE key = 'next_seq'")
            ).fetchone()
            seq = int(row[0]) if row else 1
            await db.execute(
                "INSERT INTO outbox (seq, body, created_ms) VALUES (?, ?, ?)",
                (seq, json.dumps({**body, "seq": seq}), now_ms),
            )
            await db.execute(
                "INSERT INTO meta (key, value) VALUES ('next_seq', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (seq + 1,),
            )
            for agent_id in used.keys() | returned.keys():
                await db.execute(
                    "INSERT INTO leases (agent_id, used_total, returned_total) VALUES (?, ?, ?) "
                    "ON CONFLICT(agent_id) DO UPDATE SET "
                    "used_total = used_total + excluded.used_total, "
                    "returned_total = returned_total + excluded.returned_total",
                    (agent_id, used.get(agent_id, 0), returned.get(agent_id, 0)),
                )
            await db.commit()
        except Exception as exc:
            await db.rollback()
            raise JournalError(f"cannot write to the journal: {exc}") from None
        return seq

    async def pending(self, limit: int = 100) -> list[tuple[int, dict[str, Any]]]:
        """Reports not acknowledged yet, oldest first."""
        cursor = await self.db.execute(
            "SELECT seq, body FROM outbox ORDER BY seq LIMIT ?", (limit,)
        )
        return [(int(seq), json.loads(body)) for seq, body in await cursor.fetchall()]

    async def pending_count(self) -> int:
        row = await (await self.db.execute("SELECT COUNT(*) FROM outbox")).fetchone()
        return int(row[0]) if row else 0

    async def ack(self, seq: int, applied: dict[str, int]) -> None:
        """Drop an acknowledged report and raise the applied lease totals, in one transaction."""
        db = self.db
        try:
            await db.execute("BEGIN IMMEDIATE")
            await db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            for agent_id, total in applied.items():
                await db.execute(
                    "INSERT INTO leases (agent_id, applied_total) VALUES (?, ?) "
                    "ON CONFLICT(agent_id) DO UPDATE SET "
                    "applied_total = MAX(applied_total, excluded.applied_total)",
                    (agent_id, total),
                )
            await db.commit()
        except Exception as exc:
            await db.rollback()
            raise JournalError(f"cannot write to the journal: {exc}") from None

    async def drop(self, agent_id: str, nbytes: int) -> None:
        """Count an expired lease's unused bytes as given back, without reporting them."""
        await self.db.execute(
            "INSERT INTO leases (agent_id, returned_total) VALUES (?, ?) "
            "ON CONFLICT(agent_id) DO UPDATE SET returned_total = returned_total + ?",
            (agent_id, nbytes, nbytes),
        )
        await self.db.commit()

    async def leases(self) -> dict[str, LeaseTotals]:
        cursor = await self.db.execute(
            "SELECT agent_id, applied_total, used_total, returned_total FROM leases"
        )
        return {
            row[0]: LeaseTotals(
                agent_id=row[0], applied_total=row[1], used_total=row[2], returned_total=row[3]
            )
            for row in await cursor.fetchall()
        }

    async def save_agents(self, agents: list[dict[str, Any]]) -> None:
        await self.db.execute(
            "INSERT INTO agents_cache (id, body) VALUES (1, ?) "
            "ON CONFLICT(id) DO UPDATE SET body = excluded.body",
            (json.dumps(agents),),
        )
        await self.db.commit()

    async def load_agents(self) -> list[dict[str, Any]] | None:
        row = await (await self.db.execute("SELECT body FROM agents_cache WHERE id = 1")).fetchone()
        return None if row is None else list(json.loads(row[0]))
