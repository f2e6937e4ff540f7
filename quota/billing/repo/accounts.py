"""Accounts: typed rows, optimistic version checks, and the notices kept with them.

Invariants:
- A balance is written only by `save_account` or `save_balances` (many at
  once), with an optimistic version check (`WHERE version = ?`, `version + 1`);
  a stale version raises `VersionConflict` and the caller's retry loop starts over.
- An account is found by the hash of its token, never by the token itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from quota.billing.errors import VersionConflict
from quota.billing.repo.common import Row
from quota.billing.store import Bulk, Tx
from quota.contract import wire

_ACCOUNT_COLS = "id, name, balance, version, frozen, frozen_reason, low_notice_at, created_at"


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountRow:
    id: str
    name: str
    balance: int
    version: int
    frozen: bool
    frozen_reason: str | None
    low_notice_at: int | None
    created_at: int

    def to_wire(self) -> wire.Account:
        return wire.Account(
            id=self.id,
            name=self.name,
            balance=self.balance,
            version=self.version,
            frozen=self.frozen,
            frozen_reason=self.frozen_reason,
            created_at=self.created_at,
        )


def _account(row: Row) -> AccountRow:
    i, name, bal, ver, frozen, reason, notice, created = row
    return AccountRow(
        id=i,
        name=name,
        balance=bal,
        version=ver,
        frozen=bool(frozen),
        frozen_reason=reason,
        low_notice_at=notice,
        created_at=created,
    )


async def get_account(tx: Tx, account_id: str) -> AccountRow | None:
    row = await tx.one(f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE id = ?", (account_id,))
    return _account(row) if row else None


async def accounts_by_id(tx: Tx, account_ids: list[str]) -> dict[str, AccountRow]:
    """The accounts with these ids that exist, read in one statement, not one each."""
    where, params = tx.in_ids("id", account_ids)
    rows = await tx.all(f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE {where}", params)
    return {a.id: a for a in map(_account, rows)}


async def account_id_by_token(tx: Tx, token_hash: str) -> str | None:
    row = await tx.one("SELECT id FROM accounts WHERE token_hash = ?", (token_hash,))
    return str(row[0]) if row else None


async def all_accounts(tx: Tx) -> list[AccountRow]:
    return [_account(r) for r in await tx.all(f"SELECT {_ACCOUNT_COLS} FROM accounts ORDER BY id")]


async def create_account(tx: Tx, row: AccountRow, token_hash: str) -> None:
    await tx.run(
        "INSERT INTO accounts (id, name, token_hash, balance, version, created_at)"
        " VALUES (?, ?, ?, 0, 0, ?)",
        (row.id, row.name, token_hash, row.created_at),
    )


async def save_account(tx: Tx, old: AccountRow, new: AccountRow) -> AccountRow:
    """Write `new` if the stored version is still `old.version`; return it bumped."""
    changed = await tx.run(
        "UPDATE accounts SET balance = ?, frozen = ?, frozen_reason = ?, low_notice_at = ?,"
        " version = version + 1 WHERE id = ? AND version = ?",
        (new.balance, int(new.frozen), new.frozen_reason, new.low_notice_at, old.id, old.version),
    )
    if changed != 1:
        raise VersionConflict(f"account {old.id} changed since version {old.version}")
    return dataclasses.replace(new, version=old.version + 1)


_BALANCES = Bulk(
    table="accounts",
    columns=("balance", "id", "version"),
    types=("bigint", "text", "bigint"),
    key=("id", "version"),
    also="version = accounts.version + 1",
)


async def save_balances(tx: Tx, accounts: list[AccountRow]) -> None:
    """Write the balances of many accounts at once, each with its version check.

    For balances `post(..., deferred=True)` changed in memory; any account whose
    stored version moved meanwhile raises `VersionConflict` (the caller retries).
    """
    changed = await tx.update_rows(_BALANCES, [(a.balance, a.id, a.version) for a in accounts])
    if changed != len(accounts):
        raise VersionConflict(f"{len(accounts) - changed} account(s) changed under a report")


async def add_notice(
    tx: Tx, account_id: str, kind: str, payload: str, at: int, *, event_id: str, state: str
) -> None:
    """Keep a notice with its account, in the webhook outbox (`repo.webhooks`); held, batched."""
    tx.later(
        "INSERT INTO notices (account_id, kind, payload, at, event_id, state)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (account_id, kind, payload, at, event_id, state),
    )
