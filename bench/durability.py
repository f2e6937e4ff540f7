"""What durable commits cost: a deposit's latency with `synchronous=FULL` against NORMAL.

Invariants:
- Each deposit is the real one (`BillingService.accounts.deposit`, one
  transaction with its ledger entry and payment record) on a real SQLite file
  in the section's folder; only the store's `synchronous` differs.
- The two modes alternate in rounds, so a change of machine load during the
  run weighs on both alike; the ratio is taken within the run.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

from bench.report import Results
from quota.billing.auth import Principal
from quota.billing.clock import SystemClock
from quota.billing.config import config_from_mapping
from quota.billing.service import BillingService
from quota.billing.store import SqliteStore
from quota.contract import wire
from tests.rigs.procs import Procs

ADMIN = Principal(kind="admin")
PLANS = [{"name": "pro", "price": "19", "period": "30d", "traffic": "10G"}]


async def _deposits(path: Path, synchronous: str, count: int) -> list[float]:
    """Milliseconds of each of `count` deposits into one account."""
    server = {"admin_token": "bench-durability-admin-0123456789", "database": str(path)}
    config = config_from_mapping({"server": server, "plans": PLANS}, {})
    async with SqliteStore(path, synchronous=synchronous) as store:
        service = BillingService(store, config, SystemClock())
        created = await service.accounts.create(
            ADMIN, f"acc-{path.stem}", wire.CreateAccountRequest(name="bench")
        )
        account = created.account.id
        took = []
        for n in range(count):
            request = wire.DepositRequest(account_id=account, payment_id=f"p{n}", amount=1000)
            t0 = time.perf_counter()
            await service.accounts.deposit(ADMIN, request)
            took.append((time.perf_counter() - t0) * 1000)
    return took


def run(res: Results, procs: Procs, quick: bool) -> None:
    rounds, count = (3, 100) if quick else (5, 300)
    run_plan(res, procs, rounds, count)


def run_plan(res: Results, procs: Procs, rounds: int, count: int) -> None:
    """Rounds of deposits with FULL and NORMAL; median latency of each and their ratio."""
    medians: dict[str, list[float]] = {"FULL": [], "NORMAL": []}
    for n in range(rounds):
        for mode in medians:
            path = procs.folder / f"durability-{mode.lower()}-{n}.sqlite3"
            medians[mode].append(statistics.median(asyncio.run(_deposits(path, mode, count))))
    how = (
        f"{rounds} alternating rounds of {count} deposits (one transaction each) in-process on"
        " a SQLite file in WAL mode; median per round"
    )
    for mode, label in (("FULL", "durable (FULL, the default)"), ("NORMAL", "NORMAL")):
        fig = res.figure(f"sync.deposit.{mode.lower()}", "7", f"deposit latency, {label}", "ms")
        fig.samples.extend(round(v, 3) for v in medians[mode])
        fig.note = how
    ratio = statistics.median(medians["FULL"]) / statistics.median(medians["NORMAL"])
    res.info["sync.deposit FULL/NORMAL"] = f"{ratio:.2f}x the latency of NORMAL"
