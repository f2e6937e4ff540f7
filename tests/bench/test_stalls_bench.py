"""The stalls section: a funded transfer through a synced relay, pauses read from the stream log."""

from __future__ import annotations

from pathlib import Path

from bench import stalls
from bench.report import Results
from tests.rigs.procs import Procs


def test_stalls_section_counts_the_pauses_of_a_funded_transfer(tmp_path: Path) -> None:
    """A small funded transfer gives its pauses, paused time and a target, from the stream log."""
    res = Results(quick=True, argv=["bench"])
    with Procs(tmp_path) as procs:
        stalls.measure(res, procs, stalls.Plan(total=16 * 2**20))
        started = [c.popen for c in procs.children]
    assert all(p.poll() is not None for p in started)
    pauses = res.figures[stalls.KEY].samples
    paused = res.figures[f"{stalls.KEY}.paused_ms"].samples
    assert len(pauses) == 1 and len(paused) == 1 and (paused[0] == 0 or pauses[0] > 0)
    assert [t.goal for t in res.targets] == ["0"] and res.targets[0].value == str(int(pauses[0]))
