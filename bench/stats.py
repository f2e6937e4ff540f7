"""Memory and CPU of a process, from /proc/<pid> and nothing else (CPU in ns from schedstat)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def rss_bytes(pid: int) -> int:
    """Resident set size from /proc/<pid>/status (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU time of a process, all its threads, in ns resolution from /proc/<pid>/task/*/schedstat.

    Falls back to user plus system time from /proc/<pid>/stat (10 ms ticks).
    """
    try:
        total = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):  # a thread that just ended
                total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _parents() -> dict[int, int]:
    """Every live process's parent, from /proc/<pid>/stat."""
    out: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = (entry / "stat").read_text()
            out[int(entry.name)] = int(text[text.rindex(")") + 2 :].split()[1])
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and every live descendant (sshd forks processes per session)."""
    kids: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        kids.setdefault(parent, []).append(child)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
        todo.extend(kids.get(p, ()))
    return total
