"""Each agent's open roll-up window of traffic draws, and the one ledger entry it becomes.

Traffic drawn from an agent's bucket and packages moves no money: it is written
to the ledger as one `traffic` entry per agent per window (`ledger.traffic_rollup`,
an hour by default) instead of one per report.

Invariants:
- While a window is open its draws are held on the agent's row (`open_used`,
  `open_from`, `open_until`), added to by each report in the transaction that
  drew them, so at every moment an agent's remaining traffic equals the sum of
  its ledger entries' `traffic_bytes` minus `open_used`, and the balance the sum
  of the ledger's amounts (the entry of a window moves no money).
- A window is closed once: its draws become one ledger entry and the agent's
  window is emptied in the same transaction (`close_due`), by the first report
  or maintenance pass at or after its end; the entry carries `at` = the
  window's end and the account's balance at the close as `balance_after`.
- The ledger stays append-only: nothing written to it is changed afterwards.
"""

from __future__ import annotations

from quota.billing.store import Tx

_DUE = "open_until BETWEEN 1 AND ?"
_CLOSE = (
    "INSERT INTO ledger (account_id, agent_id, kind, amount, balance_after, traffic_bytes,"
    " used_bytes, idempotency_key, reason, at)"
    " SELECT g.account_id, g.id, 'traffic', 0, a.balance, -g.open_used, g.open_used,"
    " 'traffic:' || CAST(g.open_from AS TEXT),"
    " CAST(g.open_used AS TEXT) || ' bytes relayed from bucket and packages from '"
    " || CAST(g.open_from AS TEXT) || ' to ' || CAST(g.open_until AS TEXT), g.open_until"
    f" FROM agents g JOIN accounts a ON a.id = g.account_id WHERE g.{_DUE}"
    " ORDER BY g.open_until, g.id"
)


def window(now: int, length: int) -> tuple[int, int]:
    """The roll-up window holding `now`: (start, end), aligned to the epoch."""
    start = now - now % length
    return start, start + length


async def close_due(tx: Tx, now: int) -> int:
    """Write every window that ended by `now` as its one ledger entry; how many were closed."""
    due = await tx.one(f"SELECT COUNT(*) FROM agents WHERE {_DUE}", (now,))
    if not due or not due[0]:
        return 0
    await tx.before_ledger()
    await tx.run(_CLOSE, (now,))
    await tx.run(
        f"UPDATE agents SET open_used = 0, open_from = 0, open_until = 0 WHERE {_DUE}", (now,)
    )
    return int(due[0])
