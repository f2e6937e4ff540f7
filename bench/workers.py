"""Issue 13: a relay with 1 and with 2 workers, and sshd, carrying eight tunnels at once.

Invariants:
- Eight client agents hold one endpoint each (`-R svcN:22:...`), and one support
  agent reaches each with its own `ssh -L`; one stream per tunnel, all eight at
  once, bytes flowing to the sink, which checks every count.
- The relay's CPU is every process of it: the supervisor and its workers (their
  pids from the admin API's status); sshd's is the listener and every process
  it started for these sessions. CPU per GB is CPU seconds over the run's bytes.
- `workers.balance` is the smaller worker's share of the workers' CPU in the
  2-worker run (0.5: even). On a 2-core host the load generators share the
  cores, so CPU per GB and balance are what carry over to a bigger host.
- The contenders are measured interleaved, one repetition of each in turn.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import Sink, _send, connect
from bench.report import Results
from bench.stats import cpu_seconds
from tests.rigs.contenders import SshdRig
from tests.rigs.keys import make_agent
from tests.rigs.procs import Procs
from tests.rigs.relay import BIG_GRANT, RelayRig

TUNNELS = 8


@dataclass(slots=True, kw_only=True)
class Contender:
    key: str
    name: str
    ports: list[int]
    pids: list[int] = field(default_factory=list)  # the processes whose CPU counts
    workers: list[int] = field(default_factory=list)  # of those, the workers (for balance)


def bulk_ports(ports: list[int], total: int, sink: Sink, timeout: float = 180.0) -> float:
    """One stream to each port at once, `total` bytes in all; MB/s at the sink."""
    per = total // len(ports)
    sink.reset()
    socks = [connect(port) for port in ports]
    start = threading.Barrier(len(ports) + 1)
    threads = [
        threading.Thread(target=_send, args=(s, per, start), daemon=True, name=f"bulk-{i}")
        for i, s in enumerate(socks)
    ]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    try:
        conns = sink.wait_done(len(ports), timeout)
    finally:
        for t in threads:
            t.join(timeout)
        for s in socks:
            s.close()
    wrong = [c.received for c in conns if c.received != per]
    if wrong or len(conns) != len(ports):
        raise RuntimeError(f"workers: expected {len(ports)} x {per} bytes, sink got {wrong}")
    return per * len(ports) / (max(c.last for c in conns) - t0) / 1e6


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it, from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(parents.get(p, []))
    return found


def _cpu(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            out[pid] = cpu_seconds(pid)
        except OSError:
            out[pid] = 0.0
    return out


def _relay(procs: Procs, res: Results, sink: Sink, workers: int) -> Contender:
    folder = procs.folder / f"relay_w{workers}"
    folder.mkdir(parents=True, exist_ok=True)
    owners = [make_agent(folder, f"owner{i}", "bench", "client") for i in range(TUNNELS)]
    tech = make_agent(folder, "tech", "bench", "support")
    tech.limits = {"ssh_connections_per_agent": 64}
    rig = RelayRig(
        procs,
        f"relay_w{workers}",
        agents=[*owners, tech],
        sections={
            "relay": {"workers": workers},
            "stream_log": {"json_lines": ""},
        },
        roomy=True,
    ).start()
    ports = []
    for i, owner in enumerate(owners):
        rig.grant(BIG_GRANT, owner.agent_id)
        client = rig.expose_endpoint(sink.port, name=f"svc{i}", agent=owner)
        support, port = rig.support_forward(name=f"svc{i}", agent=tech)
        ports.append(port)
        if i == 0:
            res.command(f"relay w{workers}", rig.command())
            res.command(f"relay w{workers} client agent", client.cmd)
            res.command(f"relay w{workers} support agent", support.cmd)
    status = rig.status()
    pids = [w["pid"] for w in status.get("workers", [])]
    return Contender(
        key=f"workers.relay.w{workers}",
        name=f"quotarelay, {workers} worker{'s' if workers > 1 else ''}, {TUNNELS} tunnels",
        ports=ports,
        pids=[rig.pid, *pids],
        workers=pids,
    )


def _sshd(procs: Procs, res: Results, sink: Sink) -> Contender:
    sshd = SshdRig(procs).start()
    res.command("sshd", sshd.child.cmd if sshd.child else "")
    ports = []
    for i in range(TUNNELS):
        client, support, port = sshd.bridge(sink.port)
        ports.append(port)
        if i == 0:
            res.command("sshd client agent", client.cmd)
            res.command("sshd support agent", support.cmd)
    assert sshd.child is not None
    return Contender(
        key="workers.sshd",
        name=f"OpenSSH sshd bridging {TUNNELS} -R/-L pairs",
        ports=ports,
        pids=descendants(sshd.child.pid),
    )


def measure(res: Results, sink: Sink, contenders: list[Contender], total: int, reps: int) -> None:
    for _ in range(reps):
        for c in contenders:
            before = _cpu(c.pids)
            rate = bulk_ports(c.ports, total, sink)
            after = _cpu(c.pids)
            used = {p: after[p] - before[p] for p in c.pids}
            res.figure(c.key, "13", f"{c.name}, {TUNNELS} streams", "MB/s").samples.append(
                round(rate, 1)
            )
            cpu_key = (
                c.key.replace(".relay.", ".relay.cpu.") if ".relay." in c.key else f"{c.key}.cpu"
            )
            cpu_name = f"{c.name}, CPU per GB (all its processes)"
            cpu = res.figure(cpu_key, "13", cpu_name, "CPU-s/GB")
            cpu.samples.append(round(sum(used.values()) / (total / 1e9), 3))
            if len(c.workers) > 1:
                shares = [used[p] for p in c.workers]
                balance = res.figure(
                    "workers.balance", "13", "smaller worker's share of the workers' CPU", "share"
                )
                balance.samples.append(round(min(shares) / max(sum(shares), 1e-9), 3))


def run(res: Results, procs: Procs, quick: bool) -> None:
    total = (64 if quick else 512) * 2**20
    reps = 2 if quick else 5
    sink = Sink()
    try:
        contenders = [_relay(procs, res, sink, 1), _relay(procs, res, sink, 2)]
        contenders.append(_sshd(procs, res, sink))
        res.info["workers run size"] = (
            f"{total / 2**20:.0f} MiB per run over {TUNNELS} tunnels, {reps} repetitions"
        )
        measure(res, sink, contenders, total, reps)
    finally:
        sink.close()
    res.ratio("workers: 2 workers / 1 worker, 8 tunnels", "workers.relay.w2", "workers.relay.w1")
    res.ratio("workers: 2 workers / sshd, 8 tunnels", "workers.relay.w2", "workers.sshd")
    res.ratio(
        "workers: relay CPU per GB, 2 workers / 1 worker",
        "workers.relay.cpu.w2",
        "workers.relay.cpu.w1",
    )
    res.ratio(
        "workers: relay CPU per GB, 2 workers / sshd",
        "workers.relay.cpu.w2",
        "workers.sshd.cpu",
    )
