"""The maintenance loop: renewals and expirations every `interval`, run by the server.

Invariants: a pass that fails (disk, bug) is logged and the loop goes on at the
next interval; a pass is safe to repeat and to run after any outage, because
each renewal moves `active_until` in the transaction that charges it, so every
missed period is charged exactly once, in order.
"""

from __future__ import annotations

import asyncio

import structlog

from quota.billing.agents import BillingService
from quota.billing.errors import BillingError

log = structlog.get_logger("quota.billing")


async def run_once(service: BillingService) -> None:
    try:
        result = await service.run_maintenance()
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


async def maintenance_loop(service: BillingService, interval_ms: int) -> None:
    """Run a pass at once (catch-up after downtime), then every `interval_ms`."""
    while True:
        await run_once(service)
        await asyncio.sleep(interval_ms / 1000)
