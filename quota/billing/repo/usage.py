"""Per-tunnel usage: the bytes and tunnel seconds relays reported for each tunnel, summed.

Invariants:
- One row per (agent, tunnel id) with cumulative totals; a report adds its
  deltas in the transaction that charges them, so a report applied once is
  counted once, and the tunnels of an agent add up to everything reported
  for that agent.
- A total never passes `MAX_COUNTER` (2**62): a report that would take one
  past it is refused with `OverLimit` (the caller's transaction rolls back).
- Tunnel ids are the relay's own (stable across reconnects); an item sent
  without one counts under the empty id.
"""

from __future__ import annotations

from dataclasses import dataclass

from quota.billing.repo.common import chunks, marks
from quota.billing.store import Tx
from quota.core.money import MAX_COUNTER, OverLimit

_ADD = (
    "INSERT INTO tunnel_usage (agent_id, tunnel_id, bytes, tunnel_seconds, first_at, last_at)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (agent_id, tunnel_id) DO UPDATE SET"
    " bytes = tunnel_usage.bytes + excluded.bytes,"
    " tunnel_seconds = tunnel_usage.tunnel_seconds + excluded.tunnel_seconds,"
    " last_at = excluded.last_at"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TunnelUsage:
    """Everything reported for one tunnel of one agent."""

    agent_id: str
    tunnel_id: str
    bytes: int
    tunnel_seconds: int
    first_at: int  # ms since the epoch: the first report that named it
    last_at: int  # ms since the epoch: the latest report that named it


async def add_tunnel_usage(tx: Tx, deltas: list[TunnelUsage]) -> None:
    """Add each delta's bytes and seconds to its tunnel's totals, in one statement."""
    if not deltas:
        return
    await tx.run_many(
        _ADD,
        [
            (u.agent_id, u.tunnel_id, u.bytes, u.tunnel_seconds, u.first_at, u.last_at)
            for u in deltas
        ],
    )
    # A sum past 2**63 - 1 turns REAL in SQLite (an error elsewhere): look for any past the max.
    for ids in chunks(sorted({u.agent_id for u in deltas})):
        over = await tx.one(
            f"SELECT 1 FROM tunnel_usage WHERE agent_id IN ({marks(ids)})"
            " AND (bytes > ? OR tunnel_seconds > ?) LIMIT 1",
            [*ids, MAX_COUNTER, MAX_COUNTER],
        )
        if over is not None:
            raise OverLimit("a tunnel's usage total", MAX_COUNTER)


async def tunnel_usage_of(tx: Tx, agent_id: str) -> list[TunnelUsage]:
    rows = await tx.all(
        "SELECT agent_id, tunnel_id, bytes, tunnel_seconds, first_at, last_at FROM tunnel_usage"
        " WHERE agent_id = ? ORDER BY tunnel_id",
        (agent_id,),
    )
    return [
        TunnelUsage(agent_id=a, tunnel_id=t, bytes=b, tunnel_seconds=s, first_at=f, last_at=last)
        for a, t, b, s, f, last in rows
    ]
