"""Point 6: relay RSS with many idle streams open, and with paused streams.

Invariants:
- Streams go through a relay process's public TCP port to a client agent (stock
  `ssh -R`), then to a holder process that accepts and keeps every connection.
  Each relay stream holds one descriptor; the bench process holds the client
  side, the holder the far side, so no process nears the 20,000 open-files limit.
- Connections are opened in batches, each batch waited for in the relay's
  status, so the relay's accept backlog never overflows.
- RSS is VmRSS from /proc/<pid>/status, sampled three times; bytes per stream is
  (RSS with N streams - RSS before any stream) / N.
"""

from __future__ import annotations

import socket
import sys
import time

from bench.load import _PAYLOAD, connect
from bench.report import Results, Target
from bench.stats import rss_bytes
from tests.rigs.procs import Procs
from tests.rigs.relay import BIG_GRANT, ROOT, RelayRig
from tests.rigs.waits import wait_for

BATCH = 250
MB = 1e6


def _holder(procs: Procs) -> int:
    port_file = procs.folder / "holder.port"
    port_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench.load", "hold", str(port_file)]
    procs.start("holder", cmd, cwd=ROOT)
    wait_for(lambda: port_file.exists() and port_file.read_text() != "", "the holder")
    return int(port_file.read_text())


def _open(rig: RelayRig, port: int, socks: list[socket.socket], upto: int, send: int) -> None:
    while len(socks) < upto:
        for _ in range(min(BATCH, upto - len(socks))):
            s = connect(port)
            if send:
                s.sendall(_PAYLOAD[:send])
            socks.append(s)
        want = len(socks)
        wait_for(lambda: rig.status()["streams"] >= want, f"{want} streams", 120, 0.1)  # noqa: B023


def _rss(res: Results, key: str, name: str, pid: int, base: int, n: int) -> None:
    samples = []
    for _ in range(3):
        time.sleep(0.3)
        samples.append(rss_bytes(pid))
    res.figure(f"memory.{key}", "6", f"relay RSS, {name}", "MB").samples.extend(
        round(s / MB, 1) for s in samples
    )
    res.figure(
        f"memory.{key}.per_stream", "6", f"bytes per stream, {name}", "bytes"
    ).samples.extend(round((s - base) / n) for s in samples)


def _run_idle(res: Results, procs: Procs, counts: tuple[int, ...]) -> None:
    holder = _holder(procs)
    rig = RelayRig(procs, "relay_idle", roomy=True).start()
    rig.grant(BIG_GRANT)
    res.command("relay for memory", rig.command())
    client, port = rig.expose_public(holder)
    res.command("client agent for memory", client.cmd)
    time.sleep(0.5)
    base = rss_bytes(rig.pid)
    res.figure("memory.base", "6", "relay RSS, no stream", "MB").samples.append(round(base / MB, 1))
    socks: list[socket.socket] = []
    try:
        for n in counts:
            _open(rig, port, socks, n, 0)
            _rss(res, f"idle.{n}", f"{n:,} idle streams", rig.pid, base, n)
    finally:
        for s in socks:
            s.close()
    procs.close()  # the next part starts its own relay; stop this one first


def _run_paused(res: Results, procs: Procs, n: int) -> None:
    holder = _holder(procs)
    rig = RelayRig(procs, "relay_paused", roomy=True).start()  # no grant: every stream pauses
    _client, port = rig.expose_public(holder)
    time.sleep(0.5)
    base = rss_bytes(rig.pid)
    socks: list[socket.socket] = []
    try:
        _open(rig, port, socks, n, 65536)
        view = "/v1/agents/owner"
        wait_for(lambda: rig.admin("GET", view)["waiting"] >= n, f"{n} paused streams", 60, 0.1)
        _rss(res, f"paused.{n}", f"{n:,} paused streams (64 KiB sent each)", rig.pid, base, n)
    finally:
        for s in socks:
            s.close()


def run(res: Results, procs: Procs, quick: bool) -> None:
    counts = (1000,) if quick else (1000, 10000)
    _run_idle(res, procs, counts)
    _run_paused(res, procs, 200 if quick else 1000)
    top = counts[-1]
    fig = res.figures.get(f"memory.idle.{top}")
    value = fig.median if fig is not None else None
    res.targets.append(
        Target(
            name=f"relay RSS with {top:,} idle streams",
            goal="< 200 MB for 10,000",
            value="-" if value is None else f"{value:.0f} MB",
            met=None if value is None or top < 10000 else value < 200,
            note="" if top >= 10000 else "quick run: 10,000 not opened",
        )
    )
