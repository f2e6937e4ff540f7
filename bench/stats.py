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
