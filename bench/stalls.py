"""Issue 10, point 2: a funded stream never waits for its lease (`stalls.funded.pauses`).

Invariants:
- One relay process synced to one `quotarelay billing serve` process, sync
  interval 1 s and every other lease key at its default (`billing.min_want`,
  `billing.max_want`, `quota.low_water`), so the figure is what an operator gets.
- The account can pay: a plan whose traffic covers the whole transfer twice,
  and ample coin. The transfer is one bulk upload at full speed through the
  owner's public port to a counting sink (2 GB; 256 MB with `--quick`).
- Pauses are counted from the relay's stream log (the stream's closing record:
  `pauses`, `paused_ms`), never by timing; the relay's sync counters give the
  number of reports written meanwhile, its admin API the bytes granted when the
  tunnel's reply came (the lease the tunnel primed). The goal is 0 pauses.
- Every process started is stopped with the section's `Procs`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.load import Sink, bulk
from bench.report import Results, Target
from relay.streamlog.query import list_streams
from tests.rigs.billing import BillingRig, synced_sections
from tests.rigs.procs import Procs
from tests.rigs.relay import RelayRig
from tests.rigs.waits import wait_for

KEY = "stalls.funded.pauses"
INTERVAL = "1s"


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    total: int  # bytes of the transfer
    reps: int = 1


def _relay(procs: Procs, billing: BillingRig) -> RelayRig:
    """A relay synced to `billing` every second, lease keys at their defaults."""
    sections = synced_sections(billing.url, interval=INTERVAL, registry_refresh="30s")
    del sections["billing"]["min_want"]  # the rigs' 1M: here the default floor
    sections["relay"] = {"id": "relay-1"}
    sections["stream_log"] = {"json_lines": "", "flush": "200ms"}
    note = f"billing.interval={INTERVAL}, lease keys at their defaults"
    return RelayRig(procs, "relay_funded", agents=[], sections=sections, loop=None, note=note)


def _closed(db: Path, count: int) -> list[dict[str, Any]]:
    """The stream log's closed streams, once `count` of them are written."""
    got: list[dict[str, Any]] = []

    def written() -> bool:
        got[:] = [r for r in asyncio.run(list_streams(db)) if r["closed_at_ms"]]
        return len(got) >= count

    wait_for(written, "the streams' closing records", timeout=30)
    return got


def measure(res: Results, procs: Procs, plan: Plan) -> None:
    billing = BillingRig(procs, "billing_funded", plan_traffic=2 * plan.total * plan.reps)
    billing.start()
    res.command("billing API for the funded transfer", billing.command())
    folder = procs.folder / "funded_keys"
    folder.mkdir(parents=True, exist_ok=True)
    account = billing.account("bench", 10**7)  # 10,000 coin: ample
    owner = billing.agent(folder, account, "owner", "client")
    billing.api("POST", f"/v1/agents/{owner.agent_id}/subscription", {"plan": "small"})
    relay = _relay(procs, billing)
    relay.agents = {"owner": owner}
    relay.start()
    res.command("relay synced to the billing API", relay.command())
    wait_for(lambda: relay.knows(owner.agent_id), "the relay to learn the agent", 30)
    sink = Sink()
    try:
        _child, port = relay.expose_public(sink.port)
        primed = _granted(relay, owner.agent_id)  # what the tunnel's reply came with
        before = int(relay.sync_counters().get("reports_written", 0))
        t0 = time.monotonic()
        speeds = [bulk(port, 1, plan.total, sink, timeout=600) for _ in range(plan.reps)]
        took = time.monotonic() - t0
        reports = int(relay.sync_counters().get("reports_written", 0)) - before
    finally:
        sink.close()
    rows = _closed(relay.dir / "var" / "streams.db", plan.reps)
    _record(res, plan, rows, speeds, reports, took, primed)


def _granted(relay: RelayRig, agent_id: str) -> int:
    """The bytes the relay holds granted for `agent_id` (its admin API's agent view)."""
    agents = relay.admin("GET", "/v1/agents")["agents"]
    return sum(int(a["granted"]) for a in agents if a["agent_id"] == agent_id)


def _record(
    res: Results,
    plan: Plan,
    rows: list[dict[str, Any]],
    speeds: list[float],
    reports: int,
    took: float,
    primed: int,
) -> None:
    size = f"{plan.total / 1e9:g} GB" if plan.total >= 10**9 else f"{plan.total / 2**20:g} MiB"
    note = (
        f"one bulk upload of {size} at full speed through the owner's public port, relay"
        f" synced every {INTERVAL} to a billing process (plan covering twice the transfer,"
        f" 10,000 coin); pauses and paused_ms from the stream log's closing record;"
        f" {reports} relay reports in {took:.1f} s; speed {', '.join(f'{s:.0f}' for s in speeds)}"
        f" MB/s; paused_ms {', '.join(str(r['paused_ms']) for r in rows)}"
        f" (by reason: {'; '.join(_by_reason(r) for r in rows)})"
    )
    fig = res.figure(KEY, "10", "funded transfer: pauses (stream log)", "pauses")
    fig.note = note + (
        f"; the tunnel's reply came with {primed:,} bytes granted: a funded agent's new tunnel"
        " primes a floor lease (billing.min_want) before the relay answers its -R"
    )
    fig.samples.extend(float(r["pauses"]) for r in rows)
    paused = res.figure(f"{KEY}.paused_ms", "10", "funded transfer: paused time", "ms")
    paused.note = "the same transfer: the stream log's paused_ms (all reasons)"
    paused.samples.extend(float(r["paused_ms"]) for r in rows)
    worst = max(int(r["pauses"]) for r in rows)
    res.targets.append(
        Target(
            name=f"pauses of a funded {size} transfer, sync interval {INTERVAL}",
            goal="0",
            value=str(worst),
            met=worst == 0,
        )
    )


def run(res: Results, procs: Procs, quick: bool) -> None:
    measure(res, procs, Plan(total=256 * 2**20 if quick else 2 * 10**9))


def _by_reason(row: dict[str, Any]) -> str:
    """The stream log's paused ms per reason that held any (`paused_lease_wait_ms` ...)."""
    parts = [
        f"{key[len('paused_') : -len('_ms')]} {value}"
        for key, value in row.items()
        if key.startswith("paused_") and key.endswith("_ms") and key != "paused_ms" and value
    ]
    return ", ".join(parts) or "none"
