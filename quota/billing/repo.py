"""Typed rows over the store: accounts, agents, keys and ledger entries.

Invariants:
- A balance changes only through `post`, which writes the new balance with an
  optimistic version check (`WHERE version = ?`, `version + 1`) and appends the
  one ledger entry that explains it, in the caller's transaction; a stale
  version raises `VersionConflict` and the caller's retry loop starts over.
- `post` refuses (402) an entry that would take the balance below zero.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from quota.billing.errors import PaymentRequired, VersionConflict
from quota.billing.store import Row, Tx
from quota.contract import wire
from quota.core.billing import AgentRole, EntryKind
from quota.core.money import format_coin

_ACCOUNT_COLS = "id, name, balance, version, frozen, frozen_reason, low_notice_at, created_at"
_AGENT_COLS = (
    "id, account_id, name, role, plan, active, lapsed, active_until, auto_renew, allow_metered,"
    " bucket_bytes, package_bytes, metered_carry, time_carry, topup_package, topup_limit,"
    " topup_spent, topup_below, topup_blocked, topup_since, created_at"
)
_ENTRY_COLS = (
    "id, account_id, agent_id, kind, amount, balance_after, traffic_bytes, used_bytes,"
    " idempotency_key, reason, at"
)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRow:
    id: str
    account_id: str
    name: str
    role: str
    plan: str | None
    active: bool
    lapsed: bool  # a renewal or a tunnel-time charge could not be paid
    active_until: int | None
    auto_renew: bool
    allow_metered: bool
    bucket_bytes: int
    package_bytes: int
    metered_carry: int
    time_carry: int
    topup_package: str | None
    topup_limit: int
    topup_spent: int
    topup_below: int
    topup_blocked: bool
    topup_since: int  # start of the period the auto top-up limit counts in
    created_at: int

    @property
    def traffic(self) -> int:
        return self.bucket_bytes + self.package_bytes

    def to_wire(self, keys: list[wire.AgentKey]) -> wire.Agent:
        return wire.Agent(
            id=self.id,
            account_id=self.account_id,
            name=self.name,
            role=AgentRole(self.role),
            status="active" if self.active else "inactive",
            plan=self.plan,
            active_until=self.active_until,
            auto_renew=self.auto_renew,
            allow_metered=self.allow_metered,
            bucket_bytes=self.bucket_bytes,
            package_bytes=self.package_bytes,
            traffic_remaining=self.traffic,
            topup_package=self.topup_package,
            topup_limit=self.topup_limit,
            topup_spent=self.topup_spent,
            topup_below=self.topup_below,
            topup_blocked=self.topup_blocked,
            keys=keys,
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


_AGENT_FIELDS = tuple(f.name for f in dataclasses.fields(AgentRow))
_AGENT_SAVED = tuple(n for n in _AGENT_FIELDS if n not in ("id", "account_id"))
_AGENT_UPDATE = f"UPDATE agents SET {', '.join(f'{n} = ?' for n in _AGENT_SAVED)} WHERE id = ?"
IN_CHUNK = 500  # ids per `IN (...)` list, well under SQLite's limit on bound parameters


def _agent(row: Row) -> AgentRow:
    values = dict(zip(_AGENT_FIELDS, row, strict=True))
    for flag in ("active", "lapsed", "auto_renew", "allow_metered", "topup_blocked"):
        values[flag] = bool(values[flag])
    return AgentRow(**values)


def _entry(row: Row) -> wire.LedgerEntry:
    names = wire.LedgerEntry.__struct_fields__
    return wire.LedgerEntry(**dict(zip(names, row, strict=True)))


async def get_account(tx: Tx, account_id: str) -> AccountRow | None:
    row = await tx.one(f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE id = ?", (account_id,))
    return _account(row) if row else None


async def accounts_by_id(tx: Tx, account_ids: list[str]) -> dict[str, AccountRow]:
    """The accounts with these ids that exist, read in a few statements, not one each."""
    found: dict[str, AccountRow] = {}
    for at in range(0, len(account_ids), IN_CHUNK):
        chunk = account_ids[at : at + IN_CHUNK]
        marks = ", ".join("?" * len(chunk))
        rows = await tx.all(f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE id IN ({marks})", chunk)
        found.update((a.id, a) for a in map(_account, rows))
    return found


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


async def get_agent(tx: Tx, agent_id: str) -> AgentRow | None:
    row = await tx.one(f"SELECT {_AGENT_COLS} FROM agents WHERE id = ?", (agent_id,))
    return _agent(row) if row else None


async def agents_by_id(tx: Tx, agent_ids: list[str]) -> dict[str, AgentRow]:
    """The agents with these ids that exist, read in a few statements, not one each."""
    found: dict[str, AgentRow] = {}
    for at in range(0, len(agent_ids), IN_CHUNK):
        chunk = agent_ids[at : at + IN_CHUNK]
        rows = await tx.all(
            f"SELECT {_AGENT_COLS} FROM agents WHERE id IN ({', '.join('?' * len(chunk))})", chunk
        )
        found.update((a.id, a) for a in map(_agent, rows))
    return found


async def agents_of(tx: Tx, account_id: str) -> list[AgentRow]:
    rows = await tx.all(
        f"SELECT {_AGENT_COLS} FROM agents WHERE account_id = ? ORDER BY created_at, id",
        (account_id,),
    )
    return [_agent(r) for r in rows]


async def due_agents(tx: Tx, now: int) -> list[AgentRow]:
    rows = await tx.all(
        f"SELECT {_AGENT_COLS} FROM agents WHERE active = 1 AND active_until IS NOT NULL"
        " AND active_until <= ? ORDER BY active_until, id",
        (now,),
    )
    return [_agent(r) for r in rows]


async def insert_agent(tx: Tx, agent: AgentRow) -> None:
    names = [f.name for f in dataclasses.fields(AgentRow)]
    await tx.run(
        f"INSERT INTO agents ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
        [getattr(agent, n) for n in names],
    )


async def save_agent(tx: Tx, agent: AgentRow) -> None:
    await tx.run(_AGENT_UPDATE, [*(getattr(agent, n) for n in _AGENT_SAVED), agent.id])


async def keys_of(tx: Tx, agent_id: str) -> list[wire.AgentKey]:
    rows = await tx.all(
        "SELECT id, public_key, revoked_at FROM agent_keys WHERE agent_id = ? ORDER BY rowid",
        (agent_id,),
    )
    return [wire.AgentKey(id=i, public_key=k, revoked=r is not None) for i, k, r in rows]


async def agent_wire(tx: Tx, agent: AgentRow) -> wire.Agent:
    return agent.to_wire(await keys_of(tx, agent.id))


@dataclass(frozen=True, slots=True, kw_only=True)
class Posting:
    """One ledger entry to post: a balance change and/or an agent traffic change."""

    kind: EntryKind
    amount: int = 0
    agent_id: str | None = None
    traffic_bytes: int = 0
    used_bytes: int = 0
    reason: str


async def post(
    tx: Tx, account: AccountRow, posting: Posting, *, key: str, at: int
) -> tuple[AccountRow, wire.LedgerEntry]:
    """Apply `posting` to the balance (version-checked) and append its ledger entry."""
    balance = account.balance + posting.amount
    if balance < 0:
        raise PaymentRequired(
            f"balance {format_coin(account.balance)} cannot cover {format_coin(-posting.amount)}"
            f" for {posting.kind.value}"
        )
    if posting.amount:
        account = await save_account(tx, account, dataclasses.replace(account, balance=balance))
    entry_id = await tx.insert(
        f"INSERT INTO ledger ({_ENTRY_COLS.removeprefix('id, ')}) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (
            account.id,
            posting.agent_id,
            posting.kind.value,
            posting.amount,
            balance,
            posting.traffic_bytes,
            posting.used_bytes,
            key,
            posting.reason,
            at,
        ),
    )
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
        reason=posting.reason,
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
        "SELECT COALESCE(SUM(amount), 0) FROM ledger WHERE account_id = ?", (account_id,)
    )
    rows = await tx.all(
        "SELECT agent_id, SUM(traffic_bytes) FROM ledger WHERE account_id = ?"
        " AND agent_id IS NOT NULL GROUP BY agent_id",
        (account_id,),
    )
    return int(row[0] if row else 0), {str(a): int(s) for a, s in rows}
