"""The ledger: immutable entries, each explaining one change of a balance or of traffic.

Invariants:
- A balance changes only through `post`, which writes the new balance with the
  account's optimistic version check and appends the one ledger entry that
  explains it, in the caller's transaction (or, `deferred`, hands the new
  balance back for `save_balances` to write with the same check before commit).
- `post` refuses (402) an entry that would take the balance below zero, and
  (`OverLimit`) one that would take it past `MAX_MILLICOINS` (2**62).
- Entries are never updated or deleted (triggers in the store refuse it);
  corrections are new entries. Ids follow commit order (`Tx.before_ledger`),
  so paging by id (`after`) never skips an entry committed late.
- An entry posted with `numbered=False` is held and sent in a batch with the
  transaction's next statement; its id is not read back, so the entry handed
  back carries id 0 (for operations that answer no one with their entries).
- A reason is at most `wire.MAX_STR` characters, the document's maxLength: a
  reason that quotes a long name or payment id is cut.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from quota.billing.errors import PaymentRequired
from quota.billing.repo.accounts import AccountRow, save_account
from quota.billing.repo.common import Row
from quota.billing.store import Tx
from quota.contract import wire
from quota.core.billing import EntryKind
from quota.core.money import MAX_MILLICOINS, checked_add, format_coin

_ENTRY_COLS = (
    "id, account_id, agent_id, kind, amount, balance_after, traffic_bytes, used_bytes,"
    " idempotency_key, reason, at"
)
_INSERT_ENTRY = (
    f"INSERT INTO ledger ({_ENTRY_COLS.removeprefix('id, ')}) VALUES (?,?,?,?,?,?,?,?,?,?)"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Posting:
    """One ledger entry to post: a balance change and/or an agent traffic change."""

    kind: EntryKind
    amount: int = 0
    agent_id: str | None = None
    traffic_bytes: int = 0
    used_bytes: int = 0
    reason: str


def _entry(row: Row) -> wire.LedgerEntry:
    names = wire.LedgerEntry.__struct_fields__
    return wire.LedgerEntry(**dict(zip(names, row, strict=True)))


async def post(
    tx: Tx,
    account: AccountRow,
    posting: Posting,
    *,
    key: str,
    at: int,
    numbered: bool = True,
    deferred: bool = False,
) -> tuple[AccountRow, wire.LedgerEntry]:
    """Apply `posting` to the balance (version-checked) and append its ledger entry.

    `deferred`: the new balance is only returned (same version); the caller
    writes it with `save_balances` in the same transaction.
    """
    balance = account.balance + posting.amount
    if posting.amount > 0:
        checked_add(account.balance, posting.amount, what="balance", limit=MAX_MILLICOINS)
    if balance < 0:
        raise PaymentRequired(
            f"balance {format_coin(account.balance)} cannot cover {format_coin(-posting.amount)}"
            f" for {posting.kind.value}"
        )
    if posting.amount and deferred:
        account = dataclasses.replace(account, balance=balance)
    elif posting.amount:
        account = await save_account(tx, account, dataclasses.replace(account, balance=balance))
    reason = posting.reason
    if len(reason) > wire.MAX_STR:
        reason = reason[: wire.MAX_STR - 3] + "..."
    row = (
        account.id,
        posting.agent_id,
        posting.kind.value,
        posting.amount,
        balance,
        posting.traffic_bytes,
        posting.used_bytes,
        key,
        reason,
        at,
    )
    entry_id = 0
    await tx.before_ledger()
    if numbered:
        entry_id = await tx.insert(_INSERT_ENTRY, row)
    else:
        tx.later(_INSERT_ENTRY, row)
    entry = wire.LedgerEntry(
        id=entry_id,
        account_id=account.id,
        agent_id=posting.agent_id,
        kind=posting.kind,
        amount=posting.amount,
        balance_after=balance,
        traffic_bytes=posting.traffic_bytes,
        used_bytes=posting.used_bytes,
        idempotency_key=key,
        reason=reason,
        at=at,
    )
    return account, entry


async def ledger_page(
    tx: Tx, account_id: str, *, after: int, limit: int, filters: dict[str, object]
) -> list[wire.LedgerEntry]:
    """Entries of an account with id > `after`, oldest first, filtered by exact columns."""
    where = ["account_id = ?", "id > ?"]
    params: list[object] = [account_id, after]
    for column, value in filters.items():
        op = {"since": "at >= ?", "until": "at < ?"}.get(column, f"{column} = ?")
        where.append(op)
        params.append(value)
    rows = await tx.all(
        f"SELECT {_ENTRY_COLS} FROM ledger WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
        [*params, limit],
    )
    return [_entry(r) for r in rows]


async def sums(tx: Tx, account_id: str) -> tuple[int, dict[str, int]]:
    """The sum of an account's ledger amounts and of each agent's traffic bytes."""
    row = await tx.one(
        "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM ledger WHERE account_id = ?",
        (account_id,),
    )
    rows = await tx.all(
        "SELECT agent_id, CAST(SUM(traffic_bytes) AS BIGINT) FROM ledger WHERE account_id = ?"
        " AND agent_id IS NOT NULL GROUP BY agent_id",
        (account_id,),
    )
    return int(row[0] if row else 0), {str(a): int(s) for a, s in rows}


async def counts_by_kind(tx: Tx) -> dict[str, int]:
    """How many ledger entries of each kind exist, over all accounts (read by metrics)."""
    rows = await tx.all("SELECT kind, COUNT(*) FROM ledger GROUP BY kind")
    return {str(kind): int(count) for kind, count in rows}
