"""Smoke test of the billing sync figures: tiny sizes, real processes, no speed asserted."""

from __future__ import annotations

from pathlib import Path

from bench import durability, ingest, sync, sync_load
from bench.report import Results
from tests.rigs.procs import Procs

TINY_LOAD = sync_load.LoadPlan(agents=20, per_account=10, interval_ms=200, reports=2, intervals=2)


def test_sync_section_records_every_figure(tmp_path: Path) -> None:
    """Purchases resume a paused stream and 20 agents sync: every figure has samples, procs stop."""
    res = Results(quick=True, argv=["bench"])
    with Procs(tmp_path) as procs:
        sync.run_plans(res, procs, sync.PurchasePlan(reps=1, purchases=2), TINY_LOAD)
        started = [c.popen for c in procs.children]
    assert all(p.poll() is not None for p in started)
    assert res.notes == []
    for key, *_ in sync.FIGURES:
        assert res.figures[key].samples, key
    assert [t.name for t in res.targets] == [
        "ingestion of a 20-agent report, SQLite",
        "ingestion of a 20-agent report, PostgreSQL",
        "resume after a package purchase, p99, against the purchase call",
        "resume after a package purchase, p99",
    ]
    assert all(t.met is not None for t in res.targets)
    assert "client CPU per report" in res.figures["sync.ingest"].note
    assert [r.name for r in res.ratios] == [
        "package purchase to first byte p99 / the purchase call alone"
    ]


def test_fleet_never_uses_more_than_its_lease() -> None:
    """The simulated agents stay within their leases and ask below the low-water mark."""
    fleet = sync_load.Fleet(["a", "b"])
    nudged: list[int] = []
    fleet.nudge = lambda: nudged.append(1)
    fleet.add_lease("a", 1_500_000)
    for _ in range(20):
        fleet.traffic()
    assert fleet.used["b"] == 0 and fleet.used["a"] <= 1_500_000
    assert set(fleet.holdings()) == {"a", "b"} and nudged


def test_durability_figures_compare_full_with_normal(tmp_path: Path) -> None:
    """Deposits with synchronous FULL and NORMAL both give figures and a ratio."""
    res = Results(quick=True, argv=["bench"])
    with Procs(tmp_path) as procs:
        durability.run_plan(res, procs, rounds=1, count=5)
    for key, *_ in sync.DURABLE:
        assert len(res.figures[key].samples) == 1, key
    assert "x the latency of NORMAL" in res.info["sync.deposit FULL/NORMAL"]


async def test_in_process_ingestion_times_every_report_after_the_first(tmp_path: Path) -> None:
    """bench.ingest on 20 agents: two reports timed (CPU and wall), the first left out."""
    cpu, wall = await ingest.measure(str(tmp_path / "b.sqlite3"), reports=2, agents=20)
    assert len(cpu) == len(wall) == 2 and all(c > 0 for c in cpu)
