"""Usage: the raw usage of every report kept for audit, and the per-tunnel totals summed from it.

Invariants:
- `usage_log` keeps each report's usage per (agent, tunnel) as it was applied,
  one row each, in the transaction that charged it; rows are never updated or
  deleted (triggers refuse it). Usage over a time range is summed from it.
- A tunnel's cumulative totals are summed from the log when read, so a report
  writes its usage once: a report applied once is counted once, and the
  tunnels of an agent add up to everything reported for that agent.
  `tunnel_usage` holds only what reports counted before the log existed
  (schema migration 7), added to the sums; the log's rows of relay `ledger`
  (charged traffic before the log, filled in by migration 6) are not counted
  there, as `tunnel_usage` holds that usage per tunnel already.
- Tunnel ids are the relay's own (stable across reconnects); an item sent
  without one counts under the empty id.
"""

from __future__ import annotations

from dataclasses import dataclass

from quota.billing.store import Bulk, Tx
from quota.billing.store.base import LEDGER_RELAY_ID
from quota.core.money import MAX_COUNTER

_LOG = Bulk(
    table="usage_log",
    columns=(
        "relay_id",
        "seq",
        "account_id",
        "agent_id",
        "tunnel_id",
        "bytes",
        "tunnel_seconds",
        "at",
    ),
    types=("text", "bigint", "text", "text", "text", "bigint", "bigint", "bigint"),
)
# (agent_id, tunnel_id, bytes, tunnel_seconds) of one report
Delta = tuple[str, str, int, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class TunnelUsage:
    """Everything reported for one tunnel of one agent."""

    agent_id: str
    tunnel_id: str
    bytes: int
    tunnel_seconds: int
    first_at: int  # ms since the epoch: the first report that named it
    last_at: int  # ms since the epoch: the latest report that named it


async def tunnel_usage_of(tx: Tx, agent_id: str) -> list[TunnelUsage]:
    """Each tunnel's totals: what came before the log, and the log's rows (by account index)."""
    rows = await tx.all(
        "SELECT tunnel_id, CAST(SUM(bytes) AS BIGINT), CAST(SUM(tunnel_seconds) AS BIGINT),"
        " MIN(first_at), MAX(last_at) FROM ("
        "SELECT tunnel_id, bytes, tunnel_seconds, first_at, last_at FROM tunnel_usage"
        " WHERE agent_id = ? UNION ALL"
        " SELECT tunnel_id, bytes, tunnel_seconds, at, at FROM usage_log"
        " WHERE account_id IN (SELECT account_id FROM agents WHERE id = ?) AND agent_id = ?"
        " AND relay_id <> ?) AS u GROUP BY tunnel_id ORDER BY tunnel_id",
        (agent_id, agent_id, agent_id, LEDGER_RELAY_ID),
    )
    return [
        TunnelUsage(
            agent_id=agent_id, tunnel_id=t, bytes=b, tunnel_seconds=s, first_at=f, last_at=last
        )
        for t, b, s, f, last in rows
    ]


async def log_usage(
    tx: Tx, relay_id: str, seq: int, at: int, deltas: list[Delta], accounts: dict[str, str]
) -> None:
    """Keep one report's usage per (agent, tunnel) for audit; `accounts`: agent id -> account."""
    await tx.insert_rows(
        _LOG, [(relay_id, seq, accounts[a], a, t, b, s, at) for a, t, b, s in deltas]
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageFilter:
    """Which usage to sum: an account's, over `since <= at < until`, maybe one agent or tunnel."""

    account_id: str
    since: int = 0
    until: int = MAX_COUNTER
    agent_id: str | None = None
    tunnel_id: str | None = None


async def usage_between(tx: Tx, f: UsageFilter) -> list[tuple[str, str, int, int, int, int, int]]:
    """(agent, tunnel, bytes, seconds, reports, first_at, last_at) per agent and tunnel."""
    if "\x00" in (f.agent_id or "") + (f.tunnel_id or ""):
        return []  # no stored id holds NUL (PostgreSQL's text cannot), so nothing matches
    where, params = ["account_id = ?", "at >= ?", "at < ?"], [f.account_id, f.since, f.until]
    for column, value in (("agent_id", f.agent_id), ("tunnel_id", f.tunnel_id)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    rows = await tx.all(
        "SELECT agent_id, tunnel_id, CAST(SUM(bytes) AS BIGINT), CAST(SUM(tunnel_seconds) AS"
        " BIGINT), COUNT(*), MIN(at), MAX(at) FROM usage_log"
        f" WHERE {' AND '.join(where)} GROUP BY agent_id, tunnel_id ORDER BY agent_id, tunnel_id",
        params,
    )
    return [
        (str(a), str(t), int(b), int(s), int(n), int(lo), int(hi)) for a, t, b, s, n, lo, hi in rows
    ]
