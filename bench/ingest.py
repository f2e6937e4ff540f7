"""CPU of one 10,000-agent sync report in-process: `python -m bench.ingest [--pg] [--reports N]`.

Invariants:
- A billing server (`BillingServer`, SQLite in a temporary folder, or a fresh
  PostgreSQL database on 127.0.0.1:5432 with `--pg`, dropped at the end) and the
  client that posts the reports run in this process. The CPU time of the
  process (all its threads: the handler, aiohttp, aiosqlite's thread) per report
  is what the billing side spends plus a small client share (posting prepared
  bytes, reading the answer). It moves less with what else the machine runs
  than wall time does, but still by 10-20 % between single runs on a loaded
  machine: compare runs made alternately. PostgreSQL's own CPU is not in it.
- The agents (1,000 accounts of 10 on plan "pro") are registered through the
  admin API as `bench.sync_load` does; a first report asks a lease for every
  agent, then each report carries every agent's usage (1-200 KB, one tunnel)
  and lease requests of about 15 % of them. The first report is not counted.
- Everything opened is closed, also when a report fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.sync_load import LoadPlan, register
from quota.billing.config import BillingConfig, config_from_mapping
from quota.billing.server import BillingServer
from tests.rigs.billing import ADMIN, RELAY_TOKEN
from tests.rigs.postgres import TestDatabase, maintenance_url, probe


def _config(database: str) -> BillingConfig:
    raw = {
        "server": {"port": 0, "database": database, "admin_token": ADMIN},
        "pricing": {"metered_price_per_gb": "0.1"},
        "relays": [{"id": "relay-1", "token": RELAY_TOKEN}],
        "plans": [{"name": "pro", "price": "19", "period": "30d", "traffic": "10G"}],
    }
    return config_from_mapping(raw, {})


def bodies(ids: list[str], reports: int, seed: int = 5) -> list[bytes]:
    """The first report (a lease for every agent), then `reports` of every agent's usage."""
    rng = random.Random(seed)
    first = {"seq": 1, "leases": [{"agent_id": a, "want": 4_000_000} for a in ids]}
    out = [json.dumps(first).encode()]
    for seq in range(2, reports + 2):
        items = [
            {"agent_id": a, "tunnel_id": "t", "bytes": rng.randint(1, 200_000), "tunnel_seconds": 0}
            for a in ids
        ]
        leases = [{"agent_id": a, "want": 2_000_000} for a in ids if rng.random() < 0.15]
        out.append(json.dumps({"seq": seq, "items": items, "leases": leases}).encode())
    return out


async def measure(
    database: str, reports: int, agents: int = 10_000
) -> tuple[list[float], list[float]]:
    """CPU and wall seconds of each report after the first."""
    cpu: list[float] = []
    wall: list[float] = []
    headers = {"Authorization": f"Bearer {RELAY_TOKEN}", "Content-Type": "application/json"}
    async with BillingServer(_config(database), maintenance=False) as srv:
        ids = await register(srv.url, LoadPlan(agents=agents))
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for n, body in enumerate(bodies(ids, reports)):
                c0, t0 = time.process_time(), time.perf_counter()
                async with session.post(srv.url + "/v1/sync", data=body, headers=headers) as r:
                    answer = await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"report {n}: HTTP {r.status}: {answer[:300]!r}")
                if n:
                    cpu.append(time.process_time() - c0)
                    wall.append(time.perf_counter() - t0)
    return cpu, wall


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.splitlines()[0])
    p.add_argument("--pg", action="store_true", help="PostgreSQL on 127.0.0.1:5432, not SQLite")
    p.add_argument("--reports", type=int, default=10)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="quotarelay-ingest-") as folder:
        if not args.pg:
            cpu, wall = asyncio.run(measure(str(Path(folder) / "b.sqlite3"), args.reports))
        else:
            url = maintenance_url()
            unreachable = probe(url)
            if unreachable:
                raise SystemExit(unreachable)
            db = TestDatabase(url).create()
            try:
                cpu, wall = asyncio.run(measure(db.fresh_url(), args.reports))
            finally:
                db.drop()
    print(
        f"{'PostgreSQL' if args.pg else 'SQLite'}: {len(cpu)} reports of 10,000 agents;"
        f" CPU per report (this process, all threads) min {min(cpu) * 1000:.0f} ms,"
        f" median {statistics.median(cpu) * 1000:.0f} ms; wall min {min(wall) * 1000:.0f} ms,"
        f" median {statistics.median(wall) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
