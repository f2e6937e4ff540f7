"""A support agent that stops reading, beside a legitimate transfer (issue 9, point 4).

Invariants:
- One relay process, one paying client agent ("owner") with a public port to a
  counting sink and an endpoint "pour" to a service that writes without end.
- The legitimate transfer is a bulk upload through the public port, measured
  first on the quiet relay, then while `bench.stall` (a support agent with a
  2 GiB window) holds a channel to "pour" and has stopped reading; the ratio of
  the two medians is from the same run.
- Beside the speeds: the relay's RSS growth while the stalled channel is held,
  and the bytes charged to the owner beyond what the legitimate transfers moved
  and the stalled peer read (the kernel's socket buffers are part of it).
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from dataclasses import dataclass

from bench.load import _PAYLOAD, Sink, bulk
from bench.report import Results
from bench.stats import rss_bytes
from tests.rigs.procs import Procs
from tests.rigs.relay import BIG_GRANT, ROOT, RelayRig

MB, MiB = 1e6, 2**20


class Pour:
    """A TCP server on 127.0.0.1 that writes to each connection until it is closed."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, name="pour-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.socks.append(sock)
            threading.Thread(target=self._pour, args=(sock,), daemon=True).start()

    def _pour(self, sock: socket.socket) -> None:
        try:
            while True:
                sock.sendall(_PAYLOAD)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a sendall blocked on it
            sock.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    total: int  # bytes per legitimate transfer
    reps: int  # transfers before and after the stall


def _used(rig: RelayRig) -> int:
    return int(rig.admin("GET", "/v1/agents/owner")["used"])


def _transfers(res: Results, key: str, name: str, port: int, sink: Sink, plan: Plan) -> None:
    fig = res.figure(f"stall.{key}", "9", name, "MB/s")
    for _ in range(plan.reps):
        fig.samples.append(round(bulk(port, 1, plan.total, sink), 1))


def start_stalled_reader(res: Results, procs: Procs, rig: RelayRig) -> int:
    """Start the stalled support agent; the payload bytes it read before it stopped."""
    tech = rig.agents["tech"]
    cmd = [sys.executable, "-m", "bench.stall", str(rig.ssh_port), "tech", str(tech.key_path)]
    child = procs.start("stall", [*cmd, "pour", "22"], cwd=ROOT)
    res.command("stalled support agent", child.cmd)
    return int(json.loads(child.wait_line('"stalled"'))["stalled"])


def run(res: Results, procs: Procs, quick: bool) -> None:
    measure(res, procs, Plan(total=(64 if quick else 200) * MiB, reps=2 if quick else 3))


def measure(res: Results, procs: Procs, plan: Plan) -> None:
    sink, pour = Sink(), Pour()
    try:
        rig = RelayRig(procs, "relay_stall").start()
        rig.grant(BIG_GRANT)
        res.command("relay for slow reader", rig.command())
        _client, port = rig.expose_public(sink.port)
        rig.expose_endpoint(pour.port, name="pour")
        _transfers(res, "quiet", "legit transfer, public TCP port, quiet relay", port, sink, plan)
        used, base = _used(rig), rss_bytes(rig.pid)
        read = start_stalled_reader(res, procs, rig)
        name = "legit transfer, public TCP port, beside a stalled 2 GiB-window support agent"
        _transfers(res, "stalled", name, port, sink, plan)
        res.ratio("legit transfer: beside a stalled reader / quiet", "stall.stalled", "stall.quiet")
        grown = rss_bytes(rig.pid) - base
        res.figure("stall.rss", "9", "relay RSS growth, stalled reader held", "MB").samples.append(
            round(grown / MB, 1)
        )
        over = _used(rig) - used - plan.reps * plan.total - read
        res.figure(
            "stall.overcharge", "9", "charged beyond what the stalled reader read", "MiB"
        ).samples.append(round(over / MiB, 2))
    finally:
        sink.close()
        pour.close()
