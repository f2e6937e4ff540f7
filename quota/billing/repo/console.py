"""The web console's rows: one-time sign-in links, sessions, and the ledger read as a report.

Invariants:
- Links and sessions are kept by the SHA-256 of their token only; the token
  itself exists only in the URL or cookie handed to the account holder.
- A link is redeemed at most once: `redeem_link` marks it used in the same
  statement that checks it is unused and unexpired, so two concurrent
  redemptions cannot both succeed, on either backend.
- Day and month sums are integer arithmetic over `at` (ms since the epoch, UTC).
"""

from __future__ import annotations

from dataclasses import dataclass

from quota.billing.store import Tx

DAY_MS = 86_400_000


async def add_link(tx: Tx, token_hash: str, account_id: str, *, now: int, expires: int) -> None:
    await tx.run(
        "INSERT INTO console_links (token_hash, account_id, created_at, expires_at)"
        " VALUES (?, ?, ?, ?)",
        (token_hash, account_id, now, expires),
    )


async def redeem_link(tx: Tx, token_hash: str, now: int) -> str | None:
    """The link's account, marking the link used; None if unknown, used or expired."""
    changed = await tx.run(
        "UPDATE console_links SET used_at = ? WHERE token_hash = ? AND used_at IS NULL"
        " AND expires_at > ?",
        (now, token_hash, now),
    )
    if changed != 1:
        return None
    row = await tx.one("SELECT account_id FROM console_links WHERE token_hash = ?", (token_hash,))
    return str(row[0]) if row else None


async def add_session(tx: Tx, token_hash: str, account_id: str, *, now: int, expires: int) -> None:
    """Keep a new session, and forget the sessions that have expired."""
    await tx.run("DELETE FROM console_sessions WHERE expires_at <= ?", (now,))
    await tx.run(
        "INSERT INTO console_sessions (token_hash, account_id, created_at, expires_at)"
        " VALUES (?, ?, ?, ?)",
        (token_hash, account_id, now, expires),
    )


async def session_account(tx: Tx, token_hash: str, now: int) -> str | None:
    row = await tx.one(
        "SELECT account_id FROM console_sessions WHERE token_hash = ? AND expires_at > ?",
        (token_hash, now),
    )
    return str(row[0]) if row else None


async def drop_session(tx: Tx, token_hash: str) -> None:
    await tx.run("DELETE FROM console_sessions WHERE token_hash = ?", (token_hash,))


@dataclass(frozen=True, slots=True, kw_only=True)
class DayUsage:
    agent_id: str
    day: int  # days since the epoch, UTC
    bytes: int


async def usage_by_day(tx: Tx, account_id: str, since: int) -> list[DayUsage]:
    """Bytes used per agent and UTC day, from the relays' raw reports at or after `since`.

    Not the ledger: its traffic entries are one per agent and hour (`repo.rollup`).
    """
    rows = await tx.all(  # the divisor is written out: PostgreSQL groups by equal text
        f"SELECT agent_id, at / {DAY_MS} AS day, CAST(SUM(bytes) AS BIGINT) FROM usage_log"
        " WHERE account_id = ? AND at >= ? AND bytes > 0"
        f" GROUP BY agent_id, at / {DAY_MS} ORDER BY day, agent_id",
        (account_id, since),
    )
    return [DayUsage(agent_id=str(a), day=int(d), bytes=int(b)) for a, d, b in rows]


@dataclass(frozen=True, slots=True, kw_only=True)
class KindTotal:
    kind: str
    entries: int
    amount: int  # millicoins, signed
    traffic_bytes: int
    used_bytes: int


async def totals_by_kind(tx: Tx, account_id: str, since: int, until: int) -> list[KindTotal]:
    """Sums of an account's entries in [since, until), one row per entry kind."""
    rows = await tx.all(
        "SELECT kind, COUNT(*), CAST(SUM(amount) AS BIGINT), CAST(SUM(traffic_bytes) AS BIGINT),"
        " CAST(SUM(used_bytes) AS BIGINT) FROM ledger"
        " WHERE account_id = ? AND at >= ? AND at < ? GROUP BY kind ORDER BY kind",
        (account_id, since, until),
    )
    return [
        KindTotal(
            kind=str(k), entries=int(n), amount=int(a), traffic_bytes=int(t), used_bytes=int(u)
        )
        for k, n, a, t, u in rows
    ]


async def balance_before(tx: Tx, account_id: str, at: int) -> int:
    """The balance after the account's last entry before `at` (0 before its first)."""
    row = await tx.one(
        "SELECT balance_after FROM ledger WHERE account_id = ? AND at < ? ORDER BY id DESC LIMIT 1",
        (account_id, at),
    )
    return int(row[0]) if row else 0


async def previous_cursor(
    tx: Tx, account_id: str, after: int, limit: int, kind: str | None
) -> int | None:
    """The `after` cursor of the page before the one that starts after `after` (None: first)."""
    if after <= 0:
        return None
    where, params = "account_id = ? AND id <= ?", [account_id, after]
    if kind:
        where += " AND kind = ?"
        params.append(kind)
    row = await tx.one(
        f"SELECT id FROM ledger WHERE {where} ORDER BY id DESC LIMIT 1 OFFSET ?", [*params, limit]
    )
    return int(row[0]) if row else 0
