"""Point 9: a legitimate transfer while hostile peers press on the relay.

Invariants:
- One relay; the legitimate path is a support agent's `ssh -L` to a client
  agent's endpoint, timed as 200 MB (20 MB quick) into a sink, first quiet,
  then with the hostile peers standing: the ratio is of the same run.
- The hostile peers are 2,000 silent connections to the SSH port (never
  logging in) and 1,000 slow connections to a public port (one byte each,
  then nothing), opened in batches from 127.0.0.2 on, each batch waited for
  in the relay's status; every one is closed when the section ends. With them
  stands one support agent that opened a channel with a 2 GiB window to an
  endpoint that pours data, and reads nothing.
- Figures: throughput quiet and hostile, relay RSS and descriptors before and
  with the peers, refusals by cause (from `GET /v1/status`).
"""

from __future__ import annotations

import os
import time
from typing import Any

from bench.load import Sink, bulk
from bench.memory import _holder
from bench.report import Results
from bench.slow_reader import Pour, start_stalled_reader
from bench.stats import rss_bytes
from tests.rigs.flood import Flood
from tests.rigs.procs import Procs
from tests.rigs.relay import BIG_GRANT, RelayRig
from tests.rigs.waits import wait_for

MB = 1e6
BATCH = 250


def _seen(rig: RelayRig) -> int:
    held: dict[str, Any] = rig.status()["connections"]
    return int(held["total"]) + sum(int(n) for n in held["refused"].values())


def _flood(rig: RelayRig, flood: Flood, port: int, count: int, first: int, send: bytes) -> None:
    for start in range(0, count, BATCH):
        n = min(BATCH, count - start)
        goal = _seen(rig) + n
        before = len(flood.socks)
        flood.open(port, n, sources=20, first_source=first)
        if send:
            for sock in flood.socks[before:]:
                wait_for(lambda s=sock: _sent(s, send), "a slow peer's byte", 30, 0.01)
        wait_for(lambda g=goal: _seen(rig) >= g, f"{goal} connections seen", 120, 0.1)


def _sent(sock: Any, data: bytes) -> bool:
    try:
        return bool(sock.send(data))
    except (BlockingIOError, InterruptedError):
        return False  # still connecting
    except OSError:
        return True  # refused and closed by the relay: counted there


def _gauges(res: Results, key: str, name: str, pid: int) -> None:
    res.figure(f"hostile.rss.{key}", "9", f"relay RSS, {name}", "MB").samples.append(
        round(rss_bytes(pid) / MB, 1)
    )
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    res.figure(f"hostile.fds.{key}", "9", f"relay descriptors, {name}", "fds").samples.append(fds)


def run(res: Results, procs: Procs, quick: bool) -> None:
    total = (20 if quick else 200) * 2**20
    sink, pour = Sink(), Pour()
    holder = _holder(procs)
    rig = RelayRig(procs, "relay_hostile").start()
    rig.grant(BIG_GRANT)
    res.command("relay for hostile", rig.command())
    rig.expose_endpoint(sink.port, "svc")
    rig.expose_endpoint(pour.port, name="pour")  # what the non-reading support agent asks for
    _client, lport = rig.support_forward("svc")
    _public, port = rig.expose_public(holder)
    time.sleep(0.5)
    _gauges(res, "quiet", "quiet", rig.pid)
    quiet = res.figure("hostile.quiet", "9", "legitimate transfer, quiet", "MB/s")
    reps = 1 if quick else 3
    quiet.samples.extend(round(bulk(lport, 1, total, sink), 1) for _ in range(reps))
    with Flood() as flood:
        _flood(rig, flood, rig.ssh_port, 2000, 0, b"")
        _flood(rig, flood, port, 1000, 20, b"x")
        start_stalled_reader(res, procs, rig)  # one support agent with a 2 GiB window, not reading
        _gauges(
            res,
            "flood",
            "2,000 silent pre-auth, 1,000 slow public peers, 1 non-reading agent",
            rig.pid,
        )
        loaded = res.figure("hostile.flood", "9", "legitimate transfer, under the peers", "MB/s")
        loaded.samples.extend(round(bulk(lport, 1, total, sink), 1) for _ in range(reps))
        refused: dict[str, int] = rig.status()["connections"]["refused"]
        for cause, n in sorted(refused.items()):
            res.figure(
                f"hostile.refused.{cause}", "9", f"refused: {cause}", "count"
            ).samples.append(n)
    res.ratio("legitimate transfer under hostile peers / quiet", "hostile.flood", "hostile.quiet")
    sink.close()
    pour.close()
