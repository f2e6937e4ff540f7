"""Points 1, 2, 3 and 8: bulk throughput of every contender, side by side, in one run.

Invariants:
- All contenders are set up first and measured interleaved, one repetition of
  every contender after the other, so drift on the machine hits them alike.
- Bytes flow one way, from the connecting side to the owner's service (the
  "upload" of a support technician); the sink checks every byte count.
- The relay's own CPU time per GB (from /proc) is recorded next to its
  throughput for single streams: metering's cost shows there with less noise.
  sshd's is recorded the same way, summed over all its processes (the listener
  and every session's), so per-core efficiency is compared in the same run.
- Two anchors per path: socat is the unencrypted ceiling of a public port; sshd
  with `GatewayPorts yes` and a stock `ssh -R` does the relay's public-port job
  with every byte encrypted to the client, and sshd bridging `-R` and `-L` does
  the endpoint tunnel's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.load import Sink, bulk
from bench.report import Results, Target
from bench.stats import cpu_seconds, tree_cpu_seconds
from tests.rigs.contenders import SshdRig, socat
from tests.rigs.procs import Procs
from tests.rigs.relay import BIG_GRANT, RelayRig
from tests.rigs.ssh import cipher_of


@dataclass(slots=True, kw_only=True)
class Contender:
    key: str
    point: str
    name: str
    port: int
    streams: tuple[int, ...]
    pid: int = 0  # a process whose CPU time is recorded (with its descendants if `tree`)
    tree: bool = False  # sshd: the listener and every session process under it


@dataclass(slots=True, kw_only=True)
class Plan:
    total: int  # bytes a run moves, spread over its streams
    reps: int
    public_streams: tuple[int, ...] = (1, 8, 64)
    ssh_streams: tuple[int, ...] = (1, 8)


def _n(n: int) -> str:
    return f"{n} stream" if n == 1 else f"{n} streams"


def _relay(procs: Procs, res: Results, name: str, sink: Sink, **kw: object) -> RelayRig:
    rig = RelayRig(procs, name, roomy=True, **kw).start()  # type: ignore[arg-type]
    if rig.metering:
        rig.grant(BIG_GRANT)
    res.command(f"relay {name}", rig.command())
    return rig


def setup(procs: Procs, res: Results, sink: Sink, plan: Plan) -> list[Contender]:
    """Start every contender; return them in the order they are measured."""
    pub, ssh = plan.public_streams, plan.ssh_streams
    out = [
        Contender(
            key="public.direct",
            point="1",
            name="direct loopback, no relay",
            port=sink.port,
            streams=pub,
        )
    ]
    for buf, key, label in ((None, "socat", "default buffer"), (262144, "socat256k", "-b 262144")):
        child, port = socat(procs, sink.port, buf)
        res.command(f"socat {label}", child.cmd)
        out.append(
            Contender(key=f"public.{key}", point="1", name=f"socat {label}", port=port, streams=pub)
        )
    variants: tuple[tuple[str, str, str, str, dict[str, object]], ...] = (
        ("relay", "1", "2", "quotarelay, metering on", {}),
        ("relay_nometer", "3", "3", "quotarelay, metering off", {"metering": False}),
        ("relay_asyncio", "8", "8", "quotarelay on asyncio's loop", {"loop": "asyncio"}),
    )
    for key, p_pub, p_ssh, label, kw in variants:
        rig = _relay(procs, res, key, sink, **kw)
        client, port = rig.expose_public(sink.port)
        res.command(f"{key} client agent, public port", client.cmd)
        out.append(
            Contender(
                key=f"public.{key}",
                point=p_pub,
                name=f"{label}, public TCP port",
                port=port,
                streams=pub,
                pid=rig.pid,
            )
        )
        owner = rig.expose_endpoint(sink.port)
        support, lport = rig.support_forward()
        res.command(f"{key} client agent, endpoint", owner.cmd)
        res.command(f"{key} support agent", support.cmd)
        res.info[f"cipher {key}"] = f"{cipher_of(owner)} / {cipher_of(support)}"
        out.append(
            Contender(
                key=f"ssh.{key}",
                point=p_ssh,
                name=f"{label}, SSH endpoint tunnel",
                port=lport,
                streams=ssh,
                pid=rig.pid,
            )
        )
    gw = SshdRig(procs, "sshd_public", gateway_ports=True).start()
    res.command("sshd, GatewayPorts yes", gw.child.cmd if gw.child else "")
    client, port = gw.public(sink.port)
    res.command("sshd public-port client agent", client.cmd)
    res.info["cipher sshd public"] = cipher_of(client)
    out.append(
        Contender(
            key="public.sshd",
            point="2",
            name="OpenSSH sshd, GatewayPorts yes, ssh -R",
            port=port,
            streams=plan.ssh_streams,
            pid=gw.pid,
            tree=True,
        )
    )
    sshd = SshdRig(procs).start()
    res.command("sshd", sshd.child.cmd if sshd.child else "")
    client, support, lport = sshd.bridge(sink.port)
    res.command("sshd client agent", client.cmd)
    res.command("sshd support agent", support.cmd)
    res.info["cipher sshd"] = f"{cipher_of(client)} / {cipher_of(support)}"
    out.append(
        Contender(
            key="ssh.sshd",
            point="2",
            name="OpenSSH sshd bridging -R and -L",
            port=lport,
            streams=ssh,
            pid=sshd.pid,
            tree=True,
        )
    )
    return out


def _cpu(c: Contender) -> float:
    return tree_cpu_seconds(c.pid) if c.tree else cpu_seconds(c.pid)


def measure(res: Results, sink: Sink, contenders: list[Contender], plan: Plan) -> None:
    for _rep in range(plan.reps):
        for c in contenders:
            for n in c.streams:
                fig = res.figure(f"{c.key}.s{n}", c.point, f"{c.name}, {_n(n)}", "MB/s")
                cpu0 = _cpu(c) if c.pid else 0.0
                fig.samples.append(round(bulk(c.port, n, plan.total, sink), 1))
                if c.pid and n == 1:
                    used = _cpu(c) - cpu0
                    who = "sshd CPU per GB (all its processes)" if c.tree else "relay CPU per GB"
                    cpu = res.figure(
                        f"{c.key}.cpu.s1", c.point, f"{c.name}, {who}, 1 stream", "CPU-s/GB"
                    )
                    cpu.samples.append(round(used / (plan.total / 1e9), 3))


def judge(res: Results, plan: Plan) -> None:
    for n in plan.public_streams:
        res.ratio(
            f"public port / socat -b 262144, {_n(n)}",
            f"public.relay.s{n}",
            f"public.socat256k.s{n}",
        )
    for n in plan.ssh_streams:
        res.ratio(f"SSH endpoint tunnel / sshd, {_n(n)}", f"ssh.relay.s{n}", f"ssh.sshd.s{n}")
        res.ratio(f"public port / sshd -R, {_n(n)}", f"public.relay.s{n}", f"public.sshd.s{n}")
    for kind in ("public", "ssh"):
        res.ratio(
            f"{kind}: relay CPU per GB / sshd's, 1 stream",
            f"{kind}.relay.cpu.s1",
            f"{kind}.sshd.cpu.s1",
        )
    for kind in ("public", "ssh"):
        for n in plan.public_streams if kind == "public" else plan.ssh_streams:
            res.ratio(
                f"{kind}: metering on / off, {_n(n)}",
                f"{kind}.relay.s{n}",
                f"{kind}.relay_nometer.s{n}",
            )
            res.ratio(
                f"{kind}: uvloop / asyncio loop, {_n(n)}",
                f"{kind}.relay.s{n}",
                f"{kind}.relay_asyncio.s{n}",
            )
        res.ratio(
            f"{kind}: relay CPU per GB, metering on / off, 1 stream",
            f"{kind}.relay.cpu.s1",
            f"{kind}.relay_nometer.cpu.s1",
        )
    by = {r.name: r.value for r in res.ratios}

    def target(name: str, goal: str, ratio: str, ok: Callable[[float], bool], fmt: str) -> None:
        v = by.get(ratio)
        res.targets.append(
            Target(
                name=name,
                goal=goal,
                met=None if v is None else ok(v),
                value="-" if v is None else fmt.format(v),
            )
        )

    target(
        "public port vs socat -b 262144, 1 stream",
        ">= 1.0 x",
        "public port / socat -b 262144, 1 stream",
        lambda v: v >= 1.0,
        "{:.2f} x",
    )
    for kind in ("public", "ssh"):
        target(
            f"metering cost, {kind}, 1 stream (throughput)",
            "<= 5 %",
            f"{kind}: metering on / off, 1 stream",
            lambda v: 1 - v <= 0.05,
            "{:.2f} x on/off",
        )
        target(
            f"metering cost, {kind}, 1 stream (relay CPU per GB)",
            "<= 5 %",
            f"{kind}: relay CPU per GB, metering on / off, 1 stream",
            lambda v: v - 1 <= 0.05,
            "{:.2f} x on/off",
        )
    for kind, label in (("public", "public port"), ("ssh", "SSH endpoint tunnel")):
        target(
            f"relay CPU per GB vs sshd's, {label}, 1 stream",
            "<= 1.0 x",
            f"{kind}: relay CPU per GB / sshd's, 1 stream",
            lambda v: v <= 1.0,
            "{:.2f} x",
        )
    for n in plan.ssh_streams:
        target(
            f"public port vs sshd -R, {_n(n)}",
            ">= 1.2 x",
            f"public port / sshd -R, {_n(n)}",
            lambda v: v >= 1.2,
            "{:.2f} x",
        )
        target(
            f"SSH endpoint tunnel vs sshd, {_n(n)}",
            ">= 1.2 x",
            f"SSH endpoint tunnel / sshd, {_n(n)}",
            lambda v: v >= 1.2,
            "{:.2f} x",
        )


def run(res: Results, procs: Procs, plan: Plan) -> None:
    sink = Sink()
    try:
        contenders = setup(procs, res, sink, plan)
        res.info["bulk run size"] = f"{plan.total / 2**20:.0f} MiB per run, {plan.reps} repetitions"
        measure(res, sink, contenders, plan)
    finally:
        sink.close()
    judge(res, plan)
