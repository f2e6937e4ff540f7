"""Agents and their SSH keys: typed rows over the `agents` and `agent_keys` tables.

Invariants:
- An agent's name is unique within its account (a UNIQUE constraint backs
  `agent_name_taken`).
- A key is never deleted: revoking stamps `revoked_at` once, and a second
  revocation keeps the first time.
- An agent's traffic (bucket plus packages) is never saved past `MAX_COUNTER`
  (2**62): `save_agent` refuses it with `OverLimit`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

from quota.billing.repo.common import Row
from quota.billing.store import Bulk, Tx
from quota.contract import wire
from quota.core.billing import AgentRole
from quota.core.money import MAX_COUNTER, checked_add

_AGENT_COLS = (
    "id, account_id, name, role, plan, active, lapsed, active_until, auto_renew, allow_metered,"
    " bucket_bytes, package_bytes, metered_carry, time_carry, topup_package, topup_limit,"
    " topup_spent, topup_below, topup_blocked, topup_since, created_at,"
    " open_used, open_from, open_until"
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
    # the open roll-up window: bytes drawn from bucket and packages not yet in the
    # ledger, and the window's start and end (0: none open; see `repo.rollup`)
    open_used: int = 0
    open_from: int = 0
    open_until: int = 0

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


class AgentTuple(NamedTuple):
    """An agent's row as read, fields as `AgentRow`'s (flags as 0/1): cheap to make by the thousand.

    A sync report reads every agent it names and only reads most of them: a
    named tuple is made in C from the database row, where an `AgentRow` costs
    a call setting 24 frozen fields. `row()` makes the `AgentRow` for the few
    agents the charging rules take.
    """

    id: str
    account_id: str
    name: str
    role: str
    plan: str | None
    active: int
    lapsed: int
    active_until: int | None
    auto_renew: int
    allow_metered: int
    bucket_bytes: int
    package_bytes: int
    metered_carry: int
    time_carry: int
    topup_package: str | None
    topup_limit: int
    topup_spent: int
    topup_below: int
    topup_blocked: int
    topup_since: int
    created_at: int
    open_used: int
    open_from: int
    open_until: int

    @property
    def traffic(self) -> int:
        return self.bucket_bytes + self.package_bytes

    def row(self) -> AgentRow:
        return _agent(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentBrief:
    """What relays need of an agent: who it is, its role, whether it is active."""

    id: str
    account_id: str
    name: str
    role: str
    active: bool


_AGENT_FIELDS = tuple(f.name for f in dataclasses.fields(AgentRow))
_AGENT_SAVED = tuple(n for n in _AGENT_FIELDS if n not in ("id", "account_id"))
_AGENT_UPDATE = f"UPDATE agents SET {', '.join(f'{n} = ?' for n in _AGENT_SAVED)} WHERE id = ?"


_SAVE_TRAFFIC = Bulk(
    table="agents",
    columns=(
        "bucket_bytes",
        "package_bytes",
        "metered_carry",
        "open_used",
        "open_from",
        "open_until",
        "id",
    ),
    types=("bigint", "bigint", "bigint", "bigint", "bigint", "bigint", "text"),
    key=("id",),
)
Traffic = tuple[int, int, int, int, int, int]  # the `_SAVE_TRAFFIC` columns before the id


def _agent(row: Row) -> AgentRow:
    # spelled out: a report reads thousands of rows, and this is 5x quicker than a dict
    (i, acc, name, role, plan, active, lapsed, until, renew, metered, bucket, packages) = row[:12]
    (m_carry, t_carry, t_pkg, t_limit, t_spent, t_below, t_blocked, t_since, created) = row[12:21]
    used, open_from, open_until = row[21:]
    return AgentRow(
        id=i,
        account_id=acc,
        name=name,
        role=role,
        plan=plan,
        active=bool(active),
        lapsed=bool(lapsed),
        active_until=until,
        auto_renew=bool(renew),
        allow_metered=bool(metered),
        bucket_bytes=bucket,
        package_bytes=packages,
        metered_carry=m_carry,
        time_carry=t_carry,
        topup_package=t_pkg,
        topup_limit=t_limit,
        topup_spent=t_spent,
        topup_below=t_below,
        topup_blocked=bool(t_blocked),
        topup_since=t_since,
        created_at=created,
        open_used=used,
        open_from=open_from,
        open_until=open_until,
    )


async def get_agent(tx: Tx, agent_id: str) -> AgentRow | None:
    row = await tx.one(f"SELECT {_AGENT_COLS} FROM agents WHERE id = ?", (agent_id,))
    return _agent(row) if row else None


async def agents_by_id(tx: Tx, agent_ids: list[str]) -> dict[str, AgentRow]:
    """The agents with these ids that exist, read in one statement, not one each."""
    where, params = tx.in_ids("id", agent_ids)
    rows = await tx.all(f"SELECT {_AGENT_COLS} FROM agents WHERE {where}", params)
    return {a.id: a for a in map(_agent, rows)}


async def agents_with_leases(
    tx: Tx, relay_id: str, agent_ids: list[str]
) -> tuple[dict[str, AgentTuple], dict[str, tuple[int, int, int, int]]]:
    """These agents, and this relay's lease of each (granted, used, returned, valid_until).

    One statement for both (a report reads every agent it names and its lease).
    """
    where, params = tx.in_ids("id", agent_ids)
    rows = await tx.all(
        f"SELECT granted_total, used_total, returned_total, valid_until, {_AGENT_COLS}"
        f" FROM agents LEFT JOIN leases ON relay_id = ? AND agent_id = id WHERE {where}",
        (relay_id, *params),
    )
    make = AgentTuple._make
    agents = {row[4]: make(row[4:]) for row in rows}
    leases = {row[4]: (row[0], row[1], row[2], row[3]) for row in rows if row[3] is not None}
    return agents, leases


async def agents_of_accounts(tx: Tx, account_ids: list[str]) -> list[AgentRow]:
    """Every agent of these accounts, read in one statement, not one per account."""
    where, params = tx.in_ids("account_id", account_ids)
    return [
        _agent(r) for r in await tx.all(f"SELECT {_AGENT_COLS} FROM agents WHERE {where}", params)
    ]


async def save_traffic(tx: Tx, rows: list[tuple[int, int, int, int, int, int, str]]) -> None:
    """Write the traffic a report changed (`_SAVE_TRAFFIC`'s columns) of many agents at once.

    For traffic drawn by a report: it only ever lowers bucket and packages, so the
    sum stays within `MAX_COUNTER` as `save_agent` requires.
    """
    await tx.update_rows(_SAVE_TRAFFIC, rows)


async def agents_of(tx: Tx, account_id: str) -> list[AgentRow]:
    rows = await tx.all(
        f"SELECT {_AGENT_COLS} FROM agents WHERE account_id = ? ORDER BY created_at, id",
        (account_id,),
    )
    return [_agent(r) for r in rows]


async def agent_ids_of(tx: Tx, account_id: str) -> list[str]:
    rows = await tx.all("SELECT id FROM agents WHERE account_id = ?", (account_id,))
    return [str(r[0]) for r in rows]


async def agent_name_taken(tx: Tx, account_id: str, name: str) -> bool:
    row = await tx.one("SELECT 1 FROM agents WHERE account_id = ? AND name = ?", (account_id, name))
    return row is not None


async def due_agents(tx: Tx, now: int) -> list[AgentRow]:
    rows = await tx.all(
        f"SELECT {_AGENT_COLS} FROM agents WHERE active = 1 AND active_until IS NOT NULL"
        " AND active_until <= ? ORDER BY active_until, id",
        (now,),
    )
    return [_agent(r) for r in rows]


async def insert_agent(tx: Tx, agent: AgentRow) -> None:
    await tx.run(
        f"INSERT INTO agents ({', '.join(_AGENT_FIELDS)})"
        f" VALUES ({', '.join('?' * len(_AGENT_FIELDS))})",
        [getattr(agent, n) for n in _AGENT_FIELDS],
    )


async def save_agent(tx: Tx, agent: AgentRow) -> None:
    """Write the agent's row (held: sent with the transaction's next statement, batched)."""
    # bucket + packages is answered as traffic_remaining: it must stay within the wire's maximum
    checked_add(agent.bucket_bytes, agent.package_bytes, what="agent traffic", limit=MAX_COUNTER)
    tx.later(_AGENT_UPDATE, [*(getattr(agent, n) for n in _AGENT_SAVED), agent.id])


async def add_key(tx: Tx, key_id: str, agent_id: str, public_key: str) -> None:
    await tx.run(
        "INSERT INTO agent_keys (id, agent_id, public_key) VALUES (?, ?, ?)",
        (key_id, agent_id, public_key),
    )


async def revoke_key(tx: Tx, agent_id: str, key_id: str, at: int) -> bool:
    """Stamp a key revoked (keeping an earlier stamp); False when the agent has no such key."""
    changed = await tx.run(
        "UPDATE agent_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ? AND agent_id = ?",
        (at, key_id, agent_id),
    )
    return changed > 0


async def keys_of(tx: Tx, agent_id: str) -> list[wire.AgentKey]:
    rows = await tx.all(
        "SELECT id, public_key, revoked_at FROM agent_keys WHERE agent_id = ? ORDER BY rowid",
        (agent_id,),
    )
    return [wire.AgentKey(id=i, public_key=k, revoked=r is not None) for i, k, r in rows]


async def agent_wire(tx: Tx, agent: AgentRow) -> wire.Agent:
    return agent.to_wire(await keys_of(tx, agent.id))


async def live_keys(tx: Tx) -> dict[str, list[str]]:
    """Every agent's keys not revoked, oldest first."""
    keys: dict[str, list[str]] = {}
    for agent_id, public_key in await tx.all(
        "SELECT agent_id, public_key FROM agent_keys WHERE revoked_at IS NULL ORDER BY rowid"
    ):
        keys.setdefault(str(agent_id), []).append(str(public_key))
    return keys


async def all_agent_briefs(tx: Tx) -> list[AgentBrief]:
    """Every agent of every account, by account, oldest first."""
    rows = await tx.all(
        "SELECT id, account_id, name, role, active FROM agents ORDER BY account_id, created_at, id"
    )
    return [
        AgentBrief(id=i, account_id=acc, name=name, role=role, active=bool(active))
        for i, acc, name, role, active in rows
    ]
