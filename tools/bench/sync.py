"""Points 5 (second half) and 7: figures that need the billing sync, not built yet.

Each figure is recorded as "not measured yet" until `MEASURE` is given a function
that measures it; the rest of the suite does not change when it lands.
"""

from __future__ import annotations

from collections.abc import Callable

from tools.bench.procs import Procs
from tools.bench.report import Results, Target

WHY = "needs the billing sync"

FIGURES = (
    ("resume.purchase.p50", "5", "package purchase to first byte delivered, p50", "ms"),
    ("resume.purchase.p99", "5", "package purchase to first byte delivered, p99", "ms"),
    ("sync.requests", "7", "1,000 agents: sync requests per interval", "requests"),
    ("sync.request_bytes", "7", "1,000 agents: bytes per sync request", "bytes"),
    ("sync.billing_cpu", "7", "1,000 agents: billing API CPU per interval", "CPU-s"),
    ("sync.ingest", "7", "billing API ingestion rate", "agent-deltas/s"),
)

# Set to a function measuring all of FIGURES once the billing sync exists.
MEASURE: Callable[[Results, Procs, bool], None] | None = None


def run(res: Results, procs: Procs, quick: bool) -> None:
    if MEASURE is not None:
        MEASURE(res, procs, quick)
    else:
        for key, point, name, unit in FIGURES:
            res.not_measured(key, point, name, unit, WHY)
    fig = res.figures.get("resume.purchase.p99")
    value = fig.median if fig is not None else None
    res.targets.append(
        Target(
            name="resume after a package purchase, p99",
            goal="< 100 ms",
            value="-" if value is None else f"{value:.1f} ms",
            met=None if value is None else value < 100,
            note="" if value is not None else f"not measured yet: {WHY}",
        )
    )
