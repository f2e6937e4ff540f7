"""Points 4 and 5: enforcement precision and resume latency.

Invariants:
- Precision is measured twice: in-process, the real pump (`relay.tcp.pump.Leg`) and
  the real bucket with fake transports, over 1,000 random grants, chunk sizes,
  slice sizes and 1-4 streams sharing a bucket; and a sample over real loopback
  sockets through a relay process's public port, with grants via its admin API.
- "Over" is bytes delivered beyond what was granted; "held back" is bytes a
  paused stream held while granted bytes remained unused. Both should be 0.
- Resume latency runs on one paused stream through a relay process: from the
  moment the grant request is sent to the admin API to the moment the service
  receives the first byte. It includes the HTTP call, so it is an upper bound.
"""

from __future__ import annotations

import contextlib
import random
import socket
import statistics
import threading
import time
from typing import Any, cast

from bench.load import Sink, SinkConn, connect
from bench.report import Results, Target
from quota.core.bucket import Bucket
from relay.tcp.pump import Leg
from tests.rigs.procs import Procs
from tests.rigs.relay import RelayRig
from tests.rigs.waits import wait_for

_BUF = memoryview(bytes(range(256)) * 4096)  # 1 MiB


class _SimStream:
    """The parts of relay.streams.Stream a leg calls, for one leg."""

    def __init__(self) -> None:
        self.leg: _SimLeg | None = None

    def quota_wait(self) -> None:
        assert self.leg is not None
        self.leg.reading = False

    def quota_check(self) -> None:
        if self.leg is not None and not self.leg.held:
            self.leg.reading = True

    def after_take(self, wakes: tuple[Any, ...]) -> None:
        for meter in wakes:
            meter.owner.on_wake()

    def maybe_finish(self) -> None:
        pass


class _Out(Leg):
    def __init__(self) -> None:
        self.delivered = 0
        self.lost = False

    def write(self, data: bytes) -> None:
        self.delivered += len(data)


class _SimLeg(Leg):
    def __init__(self, stream: _SimStream, out: _Out) -> None:
        self._init_leg(cast(Any, stream), "sim")
        self.peer = out
        self.connected = True
        self.reading = True


def simulate(trials: int, seed: int = 4) -> tuple[list[int], list[int]]:
    """Over and held-back bytes per grant, real pump and bucket, fake transports."""
    rng = random.Random(seed)
    over: list[int] = []
    held_back: list[int] = []
    for _ in range(trials):
        slice_bytes = rng.choice([1, 4096, 65536, 262144, 1 << 20])
        bucket = Bucket("sim", low_water=0, slice_bytes=slice_bytes)
        out = _Out()
        legs = []
        for _k in range(rng.randint(1, 4)):
            stream = _SimStream()
            leg = stream.leg = _SimLeg(stream, out)
            leg.meter = bucket.attach(leg)
            legs.append(leg)
        granted = 0
        for _phase in range(2):
            g = rng.randint(1, 4_000_000)
            granted += g
            for meter in bucket.grant(g):
                cast(Leg, meter.owner).on_wake()
            while readable := [leg for leg in legs if leg.reading]:
                rng.choice(readable).on_data(cast(bytes, _BUF[: rng.randint(1, len(_BUF))]))
            over.append(max(0, out.delivered - granted))
            holding = sum(len(leg.held) for leg in legs)
            held_back.append(min(holding, max(0, granted - out.delivered)))
    return over, held_back


def _sender(sock: Any, size: int, rng: random.Random) -> None:
    sent = 0
    try:
        while sent < size:
            k = min(size - sent, rng.randint(1, 200_000))
            sock.sendall(_BUF[:k])
            sent += k
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # shut down by the trial once it has its figures


def real_trials(rig: RelayRig, sink: Sink, trials: int, seed: int = 5) -> tuple[list[int], ...]:
    """Over and held-back bytes per grant through a relay's public port on real sockets."""
    rng = random.Random(seed)
    _client, port = rig.expose_public(sink.port)
    over: list[int] = []
    held_back: list[int] = []
    for _ in range(trials):
        g = rng.randint(1, 2_000_000)
        expect = int(rig.grant(g)["remaining"])
        sink.reset()
        sock = connect(port)
        size = expect + rng.randint(1, 300_000)
        t = threading.Thread(target=_sender, args=(sock, size, rng))
        t.start()
        wait_for(lambda: bool(sink.conns), "the relayed connection")
        conn = sink.conns[0]
        with contextlib.suppress(TimeoutError):  # held back: recorded below
            wait_for(lambda: conn.received >= expect, "granted bytes", timeout=2)  # noqa: B023
        time.sleep(0.05)  # would more than the grant come?
        got = conn.received
        over.append(max(0, got - expect))
        held_back.append(max(0, expect - got))
        rig.grant(size - got)  # let the rest through, so the stream ends cleanly
        t.join()
        wait_for(lambda: conn.eof, "the stream to end")  # noqa: B023
        sock.close()
    return over, held_back


def _record(res: Results, key: str, name: str, over: list[int], held: list[int], how: str) -> None:
    for kind, values in (("over", over), ("held", held)):
        label = "bytes over the grant" if kind == "over" else "bytes held back while granted"
        fig = res.figure(f"precision.{key}.{kind}", "4", f"{label}, {name}", "bytes per grant")
        fig.samples.extend(values)
        fig.note = f"{len(values)} grants, {how}; total {sum(values)} bytes"


def run_precision(res: Results, procs: Procs, quick: bool) -> None:
    over, held = simulate(200 if quick else 1000)
    _record(res, "sim", "in-process", over, held, "real pump and bucket, fake transports")
    sink = Sink()
    try:
        rig = RelayRig(procs, "relay_precision").start()
        res.command("relay for precision and resume", rig.command())
        r_over, r_held = real_trials(rig, sink, 10 if quick else 100)
    finally:
        sink.close()
    _record(res, "real", "real sockets", r_over, r_held, "public port of a relay process")
    total_over = sum(over) + sum(r_over)
    res.targets.append(
        Target(
            name="bytes over any grant",
            goal="0",
            value=f"{total_over} over {len(over) + len(r_over)} grants",
            met=total_over == 0,
        )
    )


def _resume_round(
    rig: RelayRig, conn: SinkConn, samples: int, rng: random.Random
) -> tuple[list[float], list[float]]:
    """Grant a paused stream `samples` times; latency to the first byte, and of the call."""
    lat: list[float] = []
    rtt: list[float] = []
    total = conn.received
    for _ in range(samples):
        n = rng.randint(1, 65536)
        total += n
        t0 = time.perf_counter()
        rig.grant(n)
        rtt.append((time.perf_counter() - t0) * 1000)
        wait_for(lambda: conn.received >= total, "the granted bytes", timeout=10)  # noqa: B023
        first = next(t for t, _ in conn.arrivals if t >= t0)
        lat.append((first - t0) * 1000)
        time.sleep(rng.uniform(0.002, 0.01))
    return lat, rtt


def run_resume(res: Results, procs: Procs, quick: bool) -> None:
    samples, rounds = (30, 3) if quick else (200, 3)
    sink = Sink(trace=True)
    try:
        rig = RelayRig(procs, "relay_resume").start()
        res.command("relay for resume latency", rig.command())
        _client, port = rig.expose_public(sink.port)
        sock = connect(port, timeout=300)
        sender = threading.Thread(target=_sender, args=(sock, 1 << 40, random.Random(6)))
        sender.start()
        wait_for(lambda: bool(sink.conns), "the relayed connection")
        rng = random.Random(7)
        how = f"{rounds} rounds of {samples} grants of 1-64 KiB to a paused stream, public port"
        for _round in range(rounds):
            lat, rtt = _resume_round(rig, sink.conns[0], samples, rng)
            lat.sort()
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            for key, label, value in (
                ("p50", "grant to first byte delivered, p50", statistics.median(lat)),
                ("p99", "grant to first byte delivered, p99", p99),
                (
                    "http",
                    "the admin grant call alone (HTTP round trip), median",
                    statistics.median(rtt),
                ),
            ):
                fig = res.figure(
                    f"resume.grant.{key}", "5", label, "ms", note="" if key == "http" else how
                )
                fig.samples.append(round(value, 3))
        sock.shutdown(socket.SHUT_RDWR)
        sender.join()
        sock.close()
    finally:
        sink.close()
    worst = max(res.figures["resume.grant.p99"].samples)
    res.targets.append(
        Target(
            name="resume after a grant, p99 (worst round)",
            goal="< 10 ms",
            value=f"{worst:.2f} ms",
            met=worst < 10,
        )
    )
