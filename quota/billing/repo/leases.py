"""Leases: each relay's cumulative share of each agent's traffic.

Invariants:
- One row per (relay, agent) holding cumulative totals (granted, used,
  returned), never negative (CHECKs); every report's deltas are added by the
  caller (`quota.core.lease.after_report`) and written back whole, a whole
  report's leases in two statements: an update of the rows it read, and an
  insert of the new ones (a row another transaction inserted meanwhile is a
  `VersionConflict`, and the report runs again).
- "Outstanding" is what a valid lease still promises: granted - used -
  returned, never below zero, and nothing once `valid_until <= now`.
"""

from __future__ import annotations

from collections.abc import Collection

from quota.billing.errors import VersionConflict
from quota.billing.store import Bulk, Tx

# An update of the rows read is cheaper than an upsert (PostgreSQL: a hash join
# against one probe per row), and new rows go in by COPY there.
_UPDATE_LEASES = Bulk(
    table="leases",
    columns=(
        "granted_total",
        "used_total",
        "returned_total",
        "valid_until",
        "relay_id",
        "agent_id",
    ),
    types=("bigint", "bigint", "bigint", "bigint", "text", "text"),
    key=("relay_id", "agent_id"),
)
_NEW_LEASES = Bulk(
    table="leases",
    columns=(
        "relay_id",
        "agent_id",
        "granted_total",
        "used_total",
        "returned_total",
        "valid_until",
    ),
    types=("text", "text", "bigint", "bigint", "bigint", "bigint"),
)
Totals = tuple[int, int, int, int]  # granted, used, returned, valid_until
_LEFT = "granted_total - used_total - returned_total"
_OUTSTANDING = f"CAST(COALESCE(SUM(CASE WHEN {_LEFT} > 0 THEN {_LEFT} ELSE 0 END), 0) AS BIGINT)"


async def save_lease_totals(
    tx: Tx, relay_id: str, leases: dict[str, Totals], stored: Collection[str]
) -> None:
    """Write these leases of one relay (agent id -> (granted, used, returned, valid_until)).

    `stored`: the agents whose lease row was read in this transaction (updated);
    the others' rows are new (inserted).
    """
    old = [(*x, relay_id, a) for a, x in leases.items() if a in stored]
    changed = await tx.update_rows(_UPDATE_LEASES, old)
    if changed != len(old):
        raise VersionConflict(f"{len(old) - changed} lease(s) of {relay_id} went under a report")
    new = [(relay_id, a, *x) for a, x in leases.items() if a not in stored]
    await tx.insert_rows(_NEW_LEASES, new)


async def outstanding_of(tx: Tx, agent_ids: list[str], now: int) -> dict[str, int]:
    """What `outstanding` answers for each of these agents, in one statement."""
    where, params = tx.in_ids("agent_id", agent_ids)
    rows = await tx.all(
        f"SELECT agent_id, {_OUTSTANDING} FROM leases WHERE {where}"
        " AND valid_until > ? GROUP BY agent_id",
        (*params, now),
    )
    return {str(a): int(n) for a, n in rows}


async def outstanding(tx: Tx, agent_id: str, now: int) -> int:
    """Bytes all relays' valid leases of the agent still promise."""
    row = await tx.one(
        f"SELECT {_OUTSTANDING} FROM leases WHERE agent_id = ? AND valid_until > ?",
        (agent_id, now),
    )
    return int(row[0]) if row else 0


async def expire_relay(tx: Tx, relay_id: str, now: int) -> None:
    """Write off the remainder of this relay's leases that expired by `now`."""
    await tx.run(
        "UPDATE leases SET returned_total = CASE WHEN returned_total > granted_total - used_total"
        " THEN returned_total ELSE granted_total - used_total END"
        " WHERE relay_id = ? AND valid_until <= ?",
        (relay_id, now),
    )


async def extend_relay(tx: Tx, relay_id: str, valid_until: int) -> None:
    """Make every lease of this relay valid until `valid_until` (rows already so stay unwritten)."""
    await tx.run(
        "UPDATE leases SET valid_until = ? WHERE relay_id = ? AND valid_until <> ?",
        (valid_until, relay_id, valid_until),
    )
