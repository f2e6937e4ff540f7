"""Issue 13 point 3: the relay's instructions per relayed byte, counted, not timed.

CPU seconds per GB vary by several per cent between runs on a shared machine,
more than metering costs, so noise could decide an on/off comparison made of
them. An instruction count does not depend on what else the cores are doing.

Invariants:
- Each relay (metering on, metering off) runs under `valgrind --tool=callgrind`
  with instrumentation off until a transfer starts: start-up and set-up are not
  counted. Around each transfer the counters are zeroed, instrumentation turned
  on, and the counts dumped and read back once the sink saw every byte.
- Both relays carry the same transfers (one stream, same size, both paths) with
  the same stock OpenSSH clients; repetitions are interleaved.
- Under callgrind the relay runs tens of times slower, so it reads larger chunks
  than at full speed: the figures are for comparing relays with each other, not
  for converting into seconds. `rep movsb` copies count one instruction per
  byte, so copies weigh more here than they cost in time.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.load import Sink, bulk
from bench.report import Results, Target
from tests.rigs.procs import Procs
from tests.rigs.relay import BIG_GRANT, RelayRig

VALGRIND = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
VARIANTS = (("relay", "metering on", True), ("relay_nometer", "metering off", False))
GOAL = 0.03  # metering may cost at most 3 % more instructions per byte


@dataclass(slots=True, kw_only=True)
class Plan:
    total: int  # bytes per transfer
    reps: int


@dataclass(slots=True, kw_only=True)
class Counted:
    key: str  # e.g. "public.relay"
    label: str
    pid: int
    port: int
    out: Path  # callgrind's output file pattern's folder


def missing() -> str:
    """Why this section cannot run here, or ""."""
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (Debian package valgrind)"
    return ""


def _control(pid: int, *args: str) -> str:
    done = subprocess.run(
        ["callgrind_control", *args, str(pid)], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"callgrind_control {' '.join(args)}: {done.stderr or done.stdout}")
    return done.stdout


def _dumped(folder: Path, pid: int, trigger: str) -> int:
    """The instruction total of the dump made with `trigger` (callgrind's `totals:` line)."""
    for path in sorted(folder.glob(f"callgrind.{pid}.*")):
        lines = path.read_text(errors="replace").splitlines()
        if f"desc: Trigger: dump {trigger}" in lines:
            return next(int(ln.split()[1]) for ln in lines if ln.startswith("totals:"))
    raise RuntimeError(f"no callgrind dump {trigger!r} in {folder}")


def count(c: Counted, sink: Sink, total: int, trigger: str) -> float:
    """Instructions the relay ran per byte while one stream moved `total` bytes."""
    _control(c.pid, "-i", "on")
    _control(c.pid, "-z")
    bulk(c.port, 1, total, sink, timeout=900)
    _control(c.pid, "-d", trigger)
    _control(c.pid, "-i", "off")
    return _dumped(c.out, c.pid, trigger) / total


def setup(procs: Procs, res: Results, sink: Sink) -> list[Counted]:
    out: list[Counted] = []
    for key, label, metering in VARIANTS:
        folder = procs.folder / f"callgrind_{key}"
        folder.mkdir(parents=True, exist_ok=True)
        prefix = [*VALGRIND, f"--callgrind-out-file={folder}/callgrind.%p"]
        rig = RelayRig(procs, f"{key}_counted", metering=metering, roomy=True, prefix=prefix)
        rig.start()
        if metering:
            rig.grant(BIG_GRANT)
        res.command(f"relay under callgrind, {label}", rig.command())
        _client, port = rig.expose_public(sink.port)
        out.append(Counted(key=f"public.{key}", label=label, pid=rig.pid, port=port, out=folder))
        rig.expose_endpoint(sink.port)
        _support, lport = rig.support_forward()
        out.append(Counted(key=f"ssh.{key}", label=label, pid=rig.pid, port=lport, out=folder))
    for c in out:  # warm up: first streams, first packets, caches of both paths
        bulk(c.port, 1, 1 << 20, sink, timeout=300)
    return out


def measure(res: Results, sink: Sink, counted: list[Counted], plan: Plan) -> None:
    for rep in range(plan.reps):
        for c in counted:
            path = "public TCP port" if c.key.startswith("public.") else "SSH endpoint tunnel"
            fig = res.figure(
                f"{c.key}.instr",
                "3",
                f"quotarelay, {c.label}, {path}, relay instructions per byte, 1 stream",
                "instr/byte",
            )
            fig.samples.append(round(count(c, sink, plan.total, f"{c.key}.{rep}"), 3))


def judge(res: Results) -> None:
    for kind in ("public", "ssh"):
        v = res.ratio(
            f"{kind}: relay instructions per byte, metering on / off, 1 stream",
            f"{kind}.relay.instr",
            f"{kind}.relay_nometer.instr",
        )
        res.targets.append(
            Target(
                name=f"metering cost, {kind}, 1 stream (instructions per byte)",
                goal=f"<= {GOAL:.0%}",
                met=None if v is None else v - 1 <= GOAL,
                value="-" if v is None else f"{v:.3f} x on/off",
            )
        )


def run(res: Results, procs: Procs, quick: bool) -> None:
    plan = Plan(total=(8 if quick else 32) * 2**20, reps=1 if quick else 3)
    why = missing()
    if why:
        for kind in ("public", "ssh"):
            for key, label, _m in VARIANTS:
                res.not_measured(f"{kind}.{key}.instr", "3", f"{label}, {kind}", "instr/byte", why)
        return
    sink = Sink()
    try:
        counted = setup(procs, res, sink)
        res.info["instruction count transfers"] = (
            f"{plan.total / 2**20:.0f} MiB on one stream, {plan.reps} repetitions, relay under"
            " callgrind (instrumented only while a transfer runs)"
        )
        measure(res, sink, counted, plan)
    finally:
        sink.close()
    judge(res)
