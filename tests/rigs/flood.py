"""Hostile peers on loopback: silent connections from chosen 127.0.0.x addresses, and gauges.

Invariants:
- Every socket a `Flood` opens is closed when the flood is closed (it is a
  context manager), whatever the test did; nothing is ever sent on them.
- Every address in 127.0.0.0/8 is local on Linux, so distinct sources need no
  setup; the relay's own agents connect from 127.0.0.1, floods from 127.0.0.2 on.
- `Gauge` reads a process's resident memory and open descriptors from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.rigs.services import DigestService, exchange, sha


def flood_source(n: int) -> str:
    """The n-th hostile address (n >= 0): 127.0.0.2, 127.0.0.3, ..."""
    return f"127.0.{(n + 2) // 250}.{(n + 2) % 250 or 250}"


class Flood:
    """Silent TCP connections to 127.0.0.1:port, opened without waiting for each."""

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []

    def __enter__(self) -> Flood:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self, port: int, count: int, sources: int = 1, first_source: int = 0) -> None:
        """`count` connections, spread round-robin over `sources` addresses."""
        for i in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            sock.bind((flood_source(first_source + i % sources), 0))
            code = sock.connect_ex(("127.0.0.1", port))
            if code not in (0, errno.EINPROGRESS):
                sock.close()
                raise OSError(code, f"flood connect to port {port}: {os.strerror(code)}")
            self.socks.append(sock)

    def still_open(self) -> int:
        """How many connections the relay has not closed (what it sent is read and dropped)."""
        return sum(_alive(sock) for sock in self.socks)

    def close(self) -> None:
        while self.socks:
            self.socks.pop().close()


def _alive(sock: socket.socket) -> bool:
    while True:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return True  # connected (or still connecting), nothing more to read: held open
        except OSError:
            return False  # reset, or never connected
        if not data:
            return False


@dataclass(frozen=True)
class Reading:
    rss_kib: int  # summed over the processes
    fds: int  # summed over the processes
    fds_max: int = 0  # the most one process holds (each has its own open-files limit)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a relay's supervisor and its workers), from /proc."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
    return found


def rss_kib(pid: int) -> int:
    """Resident memory of one process, in KiB (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next(
        (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0
    )


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class Gauge:
    """Resident memory and descriptors of a process and its children (a relay's workers)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def read(self) -> Reading:
        tree = process_tree(self.pid)
        fds = [fd_count(p) for p in tree]
        return Reading(rss_kib=sum(rss_kib(p) for p in tree), fds=sum(fds), fds_max=max(fds))

    def nofile(self) -> tuple[int, int]:
        """The process's open-files limit (soft, hard)."""
        for line in Path(f"/proc/{self.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
        raise AssertionError("no 'Max open files' line")


def log_events(path: Path, event: str) -> list[dict[str, object]]:
    """The JSON log lines of `event` in a relay's log file."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("event") == event:
                    found.append(record)
    return found


def elapsed(start: float) -> float:
    return round(time.monotonic() - start, 3)


async def moves_data(port: int, service: DigestService, up: bytes) -> None:
    """Through 127.0.0.1:port (a forward to `service`) `up` and the service's bytes go whole."""
    conns = len(service.conns)
    digest, got = await exchange(port, up, len(service.send))
    assert (digest, got) == (sha(service.send), len(service.send))
    conn = service.conns[conns]
    await asyncio.wait_for(conn.eof.wait(), 30)
    assert (conn.digest.hexdigest(), conn.received) == (sha(up), len(up))
