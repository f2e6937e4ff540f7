"""The webhook outbox: notices waiting for delivery, claimed one attempt at a time.

Invariants:
- A notice is written once, in its operation's transaction (`add_notice` in
  `accounts`), with state `pending` when a webhook is configured (`none`
  otherwise); it leaves `pending` only for `delivered` or `failed`.
- An attempt is claimed before it is made (`claim`: attempts + 1 and `next_at`
  pushed past the attempt's timeout, only if nobody claimed it meanwhile), so
  two replicas never make the same attempt, and a process killed during one
  leaves the notice pending, due again once the claim runs out.
- `next_at` and `delivered_at` are wall-clock milliseconds (delivery timing),
  `at` is the billing clock's time of the notice.
"""

from __future__ import annotations

from dataclasses import dataclass

from quota.billing.repo.common import Row
from quota.billing.store import Tx

PENDING, DELIVERED, FAILED, NONE = "pending", "delivered", "failed", "none"
_COLS = "id, event_id, account_id, kind, payload, at, state, attempts, next_at,"
_COLS += " delivered_at, last_error"


@dataclass(frozen=True, slots=True, kw_only=True)
class Outgoing:
    """One notice as the outbox holds it."""

    id: int  # the row's number: the page cursor
    event_id: str
    account_id: str
    kind: str
    payload: str  # the exact JSON body that is POSTed and signed
    at: int
    state: str
    attempts: int
    next_at: int
    delivered_at: int | None
    last_error: str | None


def _outgoing(row: Row) -> Outgoing:
    i, event, account, kind, payload, at, state, attempts, next_at, done, error = row
    return Outgoing(
        id=int(i),
        event_id=event,
        account_id=account,
        kind=kind,
        payload=payload,
        at=int(at),
        state=state,
        attempts=int(attempts),
        next_at=int(next_at),
        delivered_at=None if done is None else int(done),
        last_error=error,
    )


async def pending_head(tx: Tx, limit: int) -> list[Outgoing]:
    """The oldest pending notices, in the order they were made (due or not)."""
    rows = await tx.all(
        f"SELECT {_COLS} FROM notices WHERE state = ? ORDER BY id LIMIT ?", (PENDING, limit)
    )
    return [_outgoing(r) for r in rows]


async def pending_count(tx: Tx) -> int:
    row = await tx.one("SELECT COUNT(*) FROM notices WHERE state = ?", (PENDING,))
    return int(row[0]) if row else 0


async def claim(tx: Tx, notice: Outgoing, until: int) -> bool:
    """Take the notice's next attempt; False when another process took it first."""
    changed = await tx.run(
        "UPDATE notices SET attempts = attempts + 1, next_at = ?"
        " WHERE id = ? AND state = ? AND attempts = ?",
        (until, notice.id, PENDING, notice.attempts),
    )
    return changed == 1


async def delivered(tx: Tx, notice_id: int, now: int) -> None:
    await tx.run(
        "UPDATE notices SET state = ?, delivered_at = ?, last_error = NULL WHERE id = ?",
        (DELIVERED, now, notice_id),
    )


async def attempt_failed(tx: Tx, notice_id: int, error: str, next_at: int | None) -> None:
    """Record a failed attempt: due again at `next_at`, or `failed` for good when None."""
    if next_at is None:
        await tx.run(
            "UPDATE notices SET state = ?, last_error = ? WHERE id = ?",
            (FAILED, error, notice_id),
        )
    else:
        await tx.run(
            "UPDATE notices SET next_at = ?, last_error = ? WHERE id = ?",
            (next_at, error, notice_id),
        )


async def find_notice(tx: Tx, account_id: str, event_id: str) -> Outgoing | None:
    row = await tx.one(
        f"SELECT {_COLS} FROM notices WHERE account_id = ? AND event_id = ?",
        (account_id, event_id),
    )
    return _outgoing(row) if row else None


async def requeue(tx: Tx, notice_id: int) -> None:
    """Put a notice back in the queue, due now, with a fresh round of retries."""
    await tx.run(
        "UPDATE notices SET state = ?, attempts = 0, next_at = 0 WHERE id = ?",
        (PENDING, notice_id),
    )


async def notices_page(tx: Tx, account_id: str, after: int, limit: int) -> list[Outgoing]:
    """An account's notices after row `after`, oldest first, at most `limit`."""
    rows = await tx.all(
        f"SELECT {_COLS} FROM notices WHERE account_id = ? AND id > ? ORDER BY id LIMIT ?",
        (account_id, after, limit),
    )
    return [_outgoing(r) for r in rows]
