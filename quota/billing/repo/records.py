"""Records of requests already answered: idempotency keys, payments, relay reports, intents.

Invariants:
- An answer is recorded in the transaction that produced it, so it exists if and
  only if the request's effects were committed; a retry finds it and changes
  nothing. A refusal (4xx) is recorded too, in a transaction of its own after
  the refused one rolled back, and changes nothing either.
- Keys are unique by table: (scope, key), payment id, (relay id, seq); the
  bodies are the JSON text of the first answer, kept as sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from quota.billing.store import Tx


@dataclass(frozen=True, slots=True, kw_only=True)
class Answered:
    """The first answer to a request, and the fingerprint of that request."""

    fingerprint: str
    body: str
    status: int = 200  # a 4xx: the body is the error answered, replayed as it was


@dataclass(frozen=True, slots=True, kw_only=True)
class Payment:
    account_id: str
    amount: int
    body: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    kind: str  # "sync"; "usage" in databases written before /v1/sync was the one contract
    fingerprint: str
    body: str


async def find_answer(tx: Tx, scope: str, key: str) -> Answered | None:
    row = await tx.one(
        "SELECT fingerprint, body, status FROM idempotency WHERE scope = ? AND key = ?",
        (scope, key),
    )
    return Answered(fingerprint=row[0], body=row[1], status=row[2]) if row else None


async def save_answer(tx: Tx, scope: str, key: str, answered: Answered) -> None:
    await tx.run(
        "INSERT INTO idempotency (scope, key, fingerprint, status, body) VALUES (?, ?, ?, ?, ?)",
        (scope, key, answered.fingerprint, answered.status, answered.body),
    )


async def find_payment(tx: Tx, payment_id: str) -> Payment | None:
    row = await tx.one(
        "SELECT account_id, amount, body FROM payments WHERE payment_id = ?", (payment_id,)
    )
    return Payment(account_id=row[0], amount=row[1], body=row[2]) if row else None


async def save_payment(tx: Tx, payment_id: str, payment: Payment, *, status: str, at: int) -> None:
    await tx.run(
        "INSERT INTO payments (payment_id, account_id, amount, status, body, at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (payment_id, payment.account_id, payment.amount, status, payment.body, at),
    )


async def add_intent(tx: Tx, intent_id: str, account_id: str, amount: int, at: int) -> None:
    await tx.run(
        "INSERT INTO deposit_intents (id, account_id, amount, created_at) VALUES (?,?,?,?)",
        (intent_id, account_id, amount, at),
    )


async def intent_amount(tx: Tx, intent_id: str, account_id: str) -> int | None:
    """The amount a deposit intent of this account announced, if there is one."""
    row = await tx.one(
        "SELECT amount FROM deposit_intents WHERE id = ? AND account_id = ?",
        (intent_id, account_id),
    )
    return int(row[0]) if row else None


async def find_report(tx: Tx, relay_id: str, seq: int) -> Report | None:
    row = await tx.one(
        "SELECT kind, fingerprint, body FROM usage_reports WHERE relay_id = ? AND seq = ?",
        (relay_id, seq),
    )
    return Report(kind=row[0], fingerprint=row[1], body=row[2]) if row else None


async def save_report(tx: Tx, relay_id: str, seq: int, report: Report, at: int) -> None:
    await tx.run(
        "INSERT INTO usage_reports (relay_id, seq, body, at, kind, fingerprint)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (relay_id, seq, report.body, at, report.kind, report.fingerprint),
    )
