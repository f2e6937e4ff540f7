"""`python -m bench [--quick] [--only NAME ...] [--out DIR]`: run the suite, write the report.

Sections: throughput (points 1, 2, 3, 8), precision (4), resume (5), memory (6),
sync (5 and 7, waiting for the billing sync), slow_reader (issue 9 point 4: a legitimate
transfer beside a support agent that stopped reading), hostile (9: a legitimate
transfer under silent and slow peers), instructions (issue 13 point 3: the relay's
instructions per byte with metering on and off, under callgrind), purchase (only
the purchase-to-first-byte part of sync), stalls (issue 10: a funded transfer never
waits for its lease), workers (13: eight tunnels through 1 and 2 workers and
through sshd). Each section runs in its own
`Procs`, so whatever it started is stopped before the next one starts. A section
that fails is recorded as failed in the report, and the others still run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import (
    hostile,
    instructions,
    memory,
    precision,
    slow_reader,
    stalls,
    sync,
    throughput,
    workers,
)
from bench.report import Results
from bench.setup_tools import missing_tools
from tests.rigs.procs import Procs, raise_nofile

Section = Callable[[Results, Procs, bool], None]


def _throughput(res: Results, procs: Procs, quick: bool) -> None:
    plan = throughput.Plan(total=(32 if quick else 256) * 2**20, reps=3 if quick else 9)
    throughput.run(res, procs, plan)


SECTIONS: dict[str, Section] = {
    "throughput": _throughput,
    "precision": precision.run_precision,
    "resume": precision.run_resume,
    "memory": memory.run,
    "sync": sync.run,
    "slow_reader": slow_reader.run,
    "hostile": hostile.run,
    "instructions": instructions.run,
    "purchase": sync.run_purchase,
    "stalls": stalls.run,
    "workers": workers.run,
}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, few repetitions (~1 min)")
    p.add_argument(
        "--only",
        action="append",
        choices=sorted(SECTIONS),
        metavar="NAME",
        help=f"run only this section (repeatable): {', '.join(SECTIONS)}",
    )
    p.add_argument("--out", type=Path, default=Path("bench"), help="output folder (bench/)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    raise_nofile()
    res = Results(quick=args.quick, argv=["python -m bench", *(argv or sys.argv[1:])])
    missing = missing_tools()
    if missing:
        res.notes.append(f"missing tools (figures that need them fail): {', '.join(missing)}")
    with tempfile.TemporaryDirectory(prefix="quotarelay-bench-") as tmp:
        for name in args.only or list(SECTIONS):
            t0 = time.monotonic()
            load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            try:
                with Procs(Path(tmp) / name) as procs:
                    SECTIONS[name](res, procs, args.quick)
            except Exception as exc:  # a failed section is reported, the rest still runs
                traceback.print_exc()
                res.notes.append(f"section {name} failed: {type(exc).__name__}: {exc}")
            took = time.monotonic() - t0
            res.info[f"section {name}"] = f"{took:.0f} s, load average before: {load}"
            print(f"bench: {name} took {took:.0f} s", file=sys.stderr)
    jpath, mpath = res.write(args.out)
    print(f"bench: wrote {jpath} and {mpath}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
