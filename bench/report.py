"""Figures, ratios and targets of one run, written as bench/results.json and bench/RESULTS.md.

Invariants:
- A figure holds its raw samples; min / median / max are computed from them, never
  typed in. A figure that could not be measured keeps a `status` saying why.
- A ratio is the quotient of two figures' medians from the same run.
- A target is judged from ratios or figures of this run only; it is recorded as
  met, short (with by how much) or not measured.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MEASURED = "measured"


@dataclass(slots=True, kw_only=True)
class Figure:
    key: str  # stable id, e.g. "public.relay.s8"
    point: str  # the point number, e.g. "1"
    name: str
    unit: str
    samples: list[float] = field(default_factory=list)
    status: str = MEASURED
    command: str = ""
    note: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        s = self.samples
        d.update(
            n=len(s),
            min=min(s) if s else None,
            median=self.median,
            max=max(s) if s else None,
        )
        return d


@dataclass(slots=True, kw_only=True)
class Ratio:
    name: str
    value: float | None
    numerator: str
    denominator: str


@dataclass(slots=True, kw_only=True)
class Target:
    name: str
    goal: str
    value: str
    met: bool | None  # None: not measured
    note: str = ""


class Results:
    """Everything one run measured, in the order it was measured."""

    def __init__(self, *, quick: bool, argv: list[str]) -> None:
        self.started = time.time()
        self.quick = quick
        self.argv = argv
        self.figures: dict[str, Figure] = {}
        self.ratios: list[Ratio] = []
        self.targets: list[Target] = []
        self.commands: dict[str, str] = {}
        self.notes: list[str] = []
        self.info: dict[str, Any] = {}

    def figure(self, key: str, point: str, name: str, unit: str, **kw: Any) -> Figure:
        fig = self.figures.get(key)
        if fig is None:
            fig = self.figures[key] = Figure(key=key, point=point, name=name, unit=unit, **kw)
        return fig

    def not_measured(self, key: str, point: str, name: str, unit: str, why: str) -> None:
        self.figure(key, point, name, unit, status=f"not measured yet: {why}")

    def median(self, key: str) -> float | None:
        fig = self.figures.get(key)
        return fig.median if fig is not None else None

    def ratio(self, name: str, numerator: str, denominator: str) -> float | None:
        a, b = self.median(numerator), self.median(denominator)
        value = a / b if a is not None and b else None
        self.ratios.append(
            Ratio(name=name, value=value, numerator=numerator, denominator=denominator)
        )
        return value

    def command(self, label: str, cmd: list[str] | str) -> None:
        self.commands[label] = cmd if isinstance(cmd, str) else " ".join(cmd)

    def to_json(self) -> dict[str, Any]:
        return {
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "duration_s": round(time.time() - self.started, 1),
            "quick": self.quick,
            "command": " ".join(self.argv),
            "machine": machine(),
            "versions": versions(),
            "info": self.info,
            "figures": [f.row() for f in self.figures.values()],
            "ratios": [asdict(r) for r in self.ratios],
            "targets": [asdict(t) for t in self.targets],
            "commands": self.commands,
            "notes": self.notes,
        }

    def write(self, out: Path) -> tuple[Path, Path]:
        out.mkdir(parents=True, exist_ok=True)
        data = self.to_json()
        jpath, mpath = out / "results.json", out / "RESULTS.md"
        jpath.write_text(json.dumps(data, indent=2) + "\n")
        mpath.write_text(markdown(data))
        return jpath, mpath


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def markdown(data: dict[str, Any]) -> str:
    """The Markdown report: figures table, ratios, targets, machine, versions, commands."""
    lines = [
        "# quotarelay benchmark results",
        "",
        f"Run `{data['command']}` at {data['started_utc']}, {data['duration_s']} s"
        + (" (quick mode: small sizes, few repetitions)" if data["quick"] else "")
        + ". Figures are min / median / max over n repetitions; they are records, not assertions.",
        "",
        "| point | figure | unit | min | median | max | n |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for f in data["figures"]:
        if f["status"] != MEASURED:
            lines.append(f"| {f['point']} | {f['name']} | {f['unit']} | {f['status']} | | | |")
            continue
        lines.append(
            f"| {f['point']} | {f['name']} | {f['unit']} | {_fmt(f['min'])} | "
            f"{_fmt(f['median'])} | {_fmt(f['max'])} | {f['n']} |"
        )
    lines += ["", "## Ratios (medians of the same run)", "", "| ratio | value |", "|---|---:|"]
    lines += [f"| {r['name']} | {_fmt(r['value'])} |" for r in data["ratios"]]
    lines += ["", "## Targets", "", "| target | goal | this run | met |", "|---|---|---|---|"]
    for t in data["targets"]:
        met = "not measured" if t["met"] is None else ("yes" if t["met"] else "**no**")
        note = f" ({t['note']})" if t["note"] else ""
        lines.append(f"| {t['name']} | {t['goal']} | {t['value']}{note} | {met} |")
    notes = [f"{f['name']}: {f['note']}" for f in data["figures"] if f.get("note")]
    if data["notes"] or notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in data["notes"] + notes]
    lines += ["", "## Machine and versions", ""]
    lines += [f"- {k}: {v}" for k, v in {**data["machine"], **data["versions"]}.items()]
    lines += [f"- {k}: {v}" for k, v in data["info"].items()]
    lines += ["", "## Commands", "", "```"]
    lines += [f"# {label}\n{cmd}" for label, cmd in data["commands"].items()]
    lines += ["```", ""]
    return "\n".join(lines)


def _first_line(cmd: list[str], needle: str = "") -> str:
    """The first line of a tool's version output (containing `needle` when given)."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if needle in ln]
    return lines[0].strip() if lines else "unknown"


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "os": platform.platform(),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str] = {"python": sys.version.split()[0]}
    for pkg in ("quotarelay", "asyncssh", "cryptography", "uvloop", "aiohttp"):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            found[pkg] = "not installed"
    found["openssh client"] = _first_line(["ssh", "-V"])
    found["openssh sshd"] = _first_line(["/usr/sbin/sshd", "-V"], "OpenSSH")
    found["socat"] = _first_line(["socat", "-V"], "version")
    return found
