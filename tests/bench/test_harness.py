"""Smoke tests of the bench harness itself: tiny sizes, well-formed results, no speed asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import precision, slow_reader, sync
from bench.__main__ import SECTIONS, main
from bench.load import Sink, bulk
from bench.report import Results, markdown
from tests.bench.test_sync_bench import TINY_LOAD
from tests.rigs.procs import Procs


def test_bulk_over_loopback_counts_every_byte() -> None:
    """A bulk run straight into the sink moves every byte and reports a positive rate."""
    sink = Sink()
    try:
        rate = bulk(sink.port, 4, 4 * 2**20, sink, timeout=30)
    finally:
        sink.close()
    assert rate > 0


def test_simulated_enforcement_is_exact() -> None:
    """The in-process precision check finds no byte over and none held back."""
    over, held = precision.simulate(20)
    assert len(over) == len(held) == 40
    assert sum(over) == 0 and sum(held) == 0


def test_report_lists_every_figure_with_stats() -> None:
    """Figures get min/median/max; unmeasured ones keep their reason; the table names both."""
    res = Results(quick=True, argv=["bench"])
    res.figure("a.s1", "1", "thing, 1 stream", "MB/s").samples.extend([3.0, 1.0, 2.0])
    res.figure("b.s1", "1", "other, 1 stream", "MB/s").samples.extend([1.0])
    res.not_measured("c", "7", "later", "x", "needs the billing sync")
    assert res.ratio("a over b", "a.s1", "b.s1") == 2.0
    data = res.to_json()
    row = data["figures"][0]
    assert (row["min"], row["median"], row["max"], row["n"]) == (1.0, 2.0, 3.0, 3)
    assert data["figures"][2]["status"] == "not measured yet: needs the billing sync"
    text = markdown(data)
    assert "| 1 | thing, 1 stream | MB/s | 1 | 2 | 3 | 3 |" in text
    assert "not measured yet: needs the billing sync" in text


def test_main_writes_both_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m bench --only sync` writes results.json and RESULTS.md."""

    def tiny(res: Results, procs: Procs, quick: bool) -> None:  # seconds, not the quick ~30 s
        sync.run_plans(res, procs, sync.PurchasePlan(reps=1, purchases=2), TINY_LOAD)

    monkeypatch.setitem(SECTIONS, "sync", tiny)
    assert main(["--quick", "--only", "sync", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert {f["key"] for f in data["figures"]} >= {"resume.purchase.p99", "sync.ingest"}
    assert data["machine"]["cores"] and data["versions"]["python"]
    assert (tmp_path / "RESULTS.md").read_text().startswith("# quotarelay benchmark results")


def test_slow_reader_section_records_speeds_memory_and_overcharge(tmp_path: Path) -> None:
    """Tiny transfers beside a stalled support agent: every figure and the ratio are recorded."""
    res = Results(quick=True, argv=["bench"])
    procs = Procs(tmp_path)
    try:
        slow_reader.measure(res, procs, slow_reader.Plan(total=4 * 2**20, reps=1))
    finally:
        procs.close()
    for key in ("quiet", "stalled", "rss", "overcharge"):
        assert len(res.figures[f"stall.{key}"].samples) == 1, key
    assert [r.name for r in res.ratios] == ["legit transfer: beside a stalled reader / quiet"]
