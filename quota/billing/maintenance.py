"""Maintenance: renewals and expirations, as one pass and as the loop the server runs.

Invariants:
- A pass first closes every traffic roll-up window that ended (`repo.rollup`),
  in one transaction, so an agent that stopped relaying gets its last window's
  ledger entry within a maintenance interval of the window's end.
- A pass processes each agent in its own transaction, so one agent's failure
  never undoes another's renewal; it is safe to run at any time and any number
  of times, because each renewal moves `active_until` in the transaction that
  charges it, so every missed period is charged exactly once, in order.
- A pass that fails (disk, bug) is logged and the loop goes on at the next
  interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from quota.billing import lifecycle, repo
from quota.billing.errors import BillingError
from quota.billing.op import Op
from quota.billing.runner import Runner
from quota.contract import wire

log = structlog.get_logger("quota.billing")

_OUTCOMES = ("renewed", "expired", "lapsed")


class Maintenance:
    """Renews, expires or lapses every agent whose period ended."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    async def run(self) -> wire.MaintenanceResult:
        """One pass over the agents due now; each in its own transaction."""
        await self._runner.run("rollup", self._close_windows)
        due = await self._runner.read(self._due)
        counts = dict.fromkeys(_OUTCOMES, 0)
        frozen: list[str] = []
        for agent_id in due:
            outcome, account_id = await self._runner.run(
                f"renewal:{agent_id}", self._renew_one(agent_id)
            )
            if outcome in counts:
                counts[outcome] += 1
            if outcome == "lapsed" and account_id not in frozen:
                frozen.append(account_id)
        return wire.MaintenanceResult(frozen_accounts=frozen, **counts)

    @staticmethod
    async def _close_windows(op: Op) -> int:
        """Write the roll-up windows that ended into the ledger (also of idle agents)."""
        return await repo.close_due(op.tx, op.now)

    @staticmethod
    async def _due(op: Op) -> list[str]:
        return [a.id for a in await repo.due_agents(op.tx, op.now)]

    @staticmethod
    def _renew_one(agent_id: str) -> Callable[[Op], Awaitable[tuple[str, str]]]:
        async def run(op: Op) -> tuple[str, str]:
            agent = await repo.get_agent(op.tx, agent_id)
            if agent is None:
                return "none", ""
            account = await repo.get_account(op.tx, agent.account_id)
            assert account is not None
            op.key = f"renewal:{agent_id}:{agent.active_until}"
            _, outcome = await lifecycle.renew_due(op, account, agent)
            return outcome, account.id

        return run


async def run_once(maintenance: Maintenance) -> None:
    try:
        result = await maintenance.run()
    except BillingError as exc:
        log.error("billing_maintenance_failed", error=str(exc))
        return
    if result.renewed or result.expired or result.lapsed:
        log.info(
            "billing_maintenance",
            renewed=result.renewed,
            expired=result.expired,
            lapsed=result.lapsed,
            frozen_accounts=result.frozen_accounts,
        )


async def maintenance_loop(maintenance: Maintenance, interval_ms: int) -> None:
    """Run a pass at once (catch-up after downtime), then every `interval_ms`."""
    while True:
        await run_once(maintenance)
        await asyncio.sleep(interval_ms / 1000)
