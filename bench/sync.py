"""Points 5 (second half) and 7: figures of the billing sync, against a real billing API process.

Invariants:
- Point 5 runs one paused stream through a relay process synced to a
  `quotarelay billing serve` process, with stock OpenSSH clients (agent `-R`,
  support `-L`): from just before `POST /v1/agents/{id}/packages` to the first
  new byte at the sink. The relay's sync interval is 30 s, so only the push
  channel can explain a resume within a second; each purchase's count of relay
  reports is recorded to show it. The purchase call's own p99 is recorded beside
  its median: on a shared machine it, not the relay, sets the p99 of the resume.
- Point 7 is measured by `bench.sync_load` (its docstring says how), once
  against a billing process on SQLite (`sync.ingest`) and once on PostgreSQL
  (`sync.ingest.pg`): a database of the bench run's own on 127.0.0.1:5432 (as
  the tests find it, `tests.rigs.postgres`), dropped at the end; without a
  reachable PostgreSQL that figure is not measured, and says why. The cost of
  durable commits (`synchronous=FULL`) is measured by `bench.durability`.
- A part that fails records its figures as not measured, with the reason; the
  other part still runs. Every process either part started is stopped with the
  section's `Procs`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import socket
import statistics
import threading
import time
from dataclasses import dataclass

from bench import durability, sync_load
from bench.load import Sink, SinkConn, connect
from bench.precision import _sender
from bench.report import Results, Target
from tests.rigs.billing import BillingRig, synced_rig
from tests.rigs.postgres import TestDatabase, maintenance_url, probe
from tests.rigs.procs import Procs
from tests.rigs.relay import RelayRig
from tests.rigs.waits import wait_for

PURCHASE = (
    ("resume.purchase.p50", "5", "package purchase to first byte delivered, p50", "ms"),
    ("resume.purchase.p99", "5", "package purchase to first byte delivered, p99", "ms"),
)
LOAD = (
    ("sync.requests", "7", "1,000 agents: sync requests per interval", "requests"),
    ("sync.request_bytes", "7", "1,000 agents: bytes per sync request", "bytes"),
    ("sync.billing_cpu", "7", "1,000 agents: billing API CPU per interval", "CPU-s"),
    ("sync.ingest", "7", "billing API ingestion rate, 10,000 agents a report", "agent-deltas/s"),
)
LOAD_PG = (
    (
        "sync.ingest.pg",
        "7",
        "billing API ingestion rate, 10,000 agents a report, PostgreSQL",
        "agent-deltas/s",
    ),
)
DURABLE = (
    ("sync.deposit.full", "7", "deposit latency, durable (FULL, the default)", "ms"),
    ("sync.deposit.normal", "7", "deposit latency, NORMAL", "ms"),
)
FIGURES = PURCHASE + LOAD + LOAD_PG  # of run_plans; DURABLE is bench.durability's

PLAN_TRAFFIC = 256 * 1024  # the plan's bucket: runs dry within the first second
PACKAGE_TRAFFIC = 64 * 1024  # each purchase lets this much through, then the stream pauses again
INTERVAL = "30s"


@dataclass(frozen=True, slots=True, kw_only=True)
class PurchasePlan:
    reps: int = 3
    purchases: int = 30


def _paused_at(relay: RelayRig, conn: SinkConn, total: int) -> None:
    """Wait until exactly `total` bytes arrived and the relay holds the stream paused."""
    wait_for(lambda: conn.received >= total, f"{total} bytes at the sink", timeout=30)
    wait_for(lambda: relay.states() == ["paused"], "the stream to pause", timeout=30)
    time.sleep(0.02)  # would more than the lease come?
    if conn.received != total:
        raise RuntimeError(f"the sink got {conn.received} bytes, the leases allow {total}")


def _purchases(
    billing: BillingRig, relay: RelayRig, client_id: str, conn: SinkConn, n: int
) -> tuple[list[float], list[float], list[int]]:
    """`n` purchases: latency to the first new byte, the API call alone, relay reports each."""
    lat: list[float] = []
    call: list[float] = []
    reports: list[int] = []
    for _ in range(n):
        total = conn.received
        before = int(relay.sync_counters().get("reports_written", 0))
        t0 = time.perf_counter()
        billing.buy_package(client_id)
        call.append((time.perf_counter() - t0) * 1000)
        wait_for(lambda: conn.received > total, "the first byte after a purchase", timeout=10)  # noqa: B023
        first = next(t for t, got in conn.arrivals if got > total)
        lat.append((first - t0) * 1000)
        _paused_at(relay, conn, total + PACKAGE_TRAFFIC)
        reports.append(int(relay.sync_counters().get("reports_written", 0)) - before)
        time.sleep(random.uniform(0.005, 0.02))
    return lat, call, reports


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def measure_purchase(res: Results, procs: Procs, plan: PurchasePlan) -> None:
    billing = BillingRig(
        procs, "billing_purchase", plan_traffic=PLAN_TRAFFIC, package_traffic=PACKAGE_TRAFFIC
    ).start()
    res.command("billing API for purchase to first byte", billing.command())
    folder = procs.folder / "purchase_keys"
    folder.mkdir(parents=True, exist_ok=True)
    account = billing.account("bench", 10**7)  # 10,000 coin: far more packages than bought
    owner = billing.agent(folder, account, "owner", "client")
    tech = billing.agent(folder, account, "tech", "support")
    client_id = owner.agent_id
    billing.api("POST", f"/v1/agents/{client_id}/subscription", {"plan": "small"})
    relay = synced_rig(procs, "relay_synced", billing, interval=INTERVAL).start()
    res.command("relay synced to the billing API", relay.command())
    wait_for(lambda: relay.knows(client_id, tech.agent_id), "the relay to learn the agents", 30)
    sink = Sink(trace=True)
    try:
        relay.expose_endpoint(sink.port, agent=owner)
        _support, port = relay.support_forward(agent=tech)
        sock = connect(port, timeout=300)
        sender = threading.Thread(target=_sender, args=(sock, 1 << 40, random.Random(8)))
        sender.start()
        try:
            wait_for(lambda: bool(sink.conns), "the relayed connection")
            conn = sink.conns[0]
            _paused_at(relay, conn, PLAN_TRAFFIC)
            _record_purchases(res, billing, relay, client_id, conn, plan)
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sender.join(10)
            sock.close()
    finally:
        sink.close()


def _record_purchases(
    res: Results,
    billing: BillingRig,
    relay: RelayRig,
    client_id: str,
    conn: SinkConn,
    plan: PurchasePlan,
) -> None:
    reports: list[int] = []
    how = (
        f"{plan.reps} repetitions of {plan.purchases} purchases of a {PACKAGE_TRAFFIC // 1024} KiB"
        " package for a stream paused with bytes waiting (relay process synced to a billing"
        " process, agent ssh -R, support ssh -L); timed from just before POST"
        f" /v1/agents/{{id}}/packages to the first new byte at the sink. Relay sync interval"
        f" {INTERVAL}: only the push channel can explain a resume this quick. The purchase"
        " grants the relay whose stream waits (it asked for more than the agent had) and"
        " the push event carries that lease: the relay journals it and resumes, with no"
        " sync round between"
    )
    for _rep in range(plan.reps):
        lat, call, per = _purchases(billing, relay, client_id, conn, plan.purchases)
        reports += per
        for key, label, value in (
            ("p50", "package purchase to first byte delivered, p50", statistics.median(lat)),
            ("p99", "package purchase to first byte delivered, p99", _p99(lat)),
            ("http", "the purchase call alone (HTTP round trip), median", statistics.median(call)),
            ("http_p99", "the purchase call alone (HTTP round trip), p99", _p99(call)),
        ):
            fig = res.figure(f"resume.purchase.{key}", "5", label, "ms")
            fig.samples.append(round(value, 3))
    note = (
        f"; relay reports per purchase: {min(reports)}-{max(reports)} (one on the push, one"
        " when the stream runs dry again and the bucket asks for more)"
    )
    res.figures["resume.purchase.p50"].note = how + note
    res.figures["resume.purchase.p99"].note = how + note


def measure_load(res: Results, procs: Procs, plan: sync_load.LoadPlan) -> None:
    billing = BillingRig(procs, "billing_load").start()
    res.command(f"billing API for {plan.agents:,} agents", billing.command())
    folder = procs.folder / "load"
    folder.mkdir(parents=True, exist_ok=True)
    res.command(
        f"relay side for {plan.agents:,} agents (in-process)",
        f"bench.sync_load: QuotaAgent + Fleet host, {plan}",
    )
    got = sync_load.run(billing.url, billing.pid, folder, plan)
    notes = sync_load.describe(got, plan)
    for (key, point, name, unit), samples, note in zip(
        LOAD,
        (got.requests, got.request_bytes, got.cpu, got.ingest),
        (notes["requests"], notes["bytes"], notes["cpu"], notes["ingest"]),
        strict=True,
    ):
        fig = res.figure(key, point, name, unit, note=note)
        fig.samples.extend(round(v, 4) for v in samples)


def measure_load_pg(res: Results, procs: Procs, plan: sync_load.LoadPlan) -> None:
    """`sync.ingest` again, with the billing process on PostgreSQL."""
    url = maintenance_url()
    unreachable = probe(url)
    if unreachable:
        raise RuntimeError(unreachable)
    db = TestDatabase(url).create()
    billing = BillingRig(procs, "billing_load_pg", database=db.fresh_url())
    try:
        billing.start()
        res.command(
            f"billing API on PostgreSQL for {plan.agents:,} agents",
            f"{billing.command()} (server.database: a fresh schema of {db.url})",
        )
        folder = procs.folder / "load_pg"
        folder.mkdir(parents=True, exist_ok=True)
        got = sync_load.run(
            billing.url, billing.pid, folder, dataclasses.replace(plan, intervals=0)
        )
        note = sync_load.describe(got, plan)["ingest"] + "; PostgreSQL 127.0.0.1:5432, same machine"
        key, point, name, unit = LOAD_PG[0]
        fig = res.figure(key, point, name, unit, note=note)
        fig.samples.extend(round(v, 4) for v in got.ingest)
    finally:
        if billing.child is not None:
            procs.stop(billing.child)  # before its database goes
        db.drop()


def _part(res: Results, figures: tuple[tuple[str, str, str, str], ...], work: object) -> None:
    """Run one part; if it fails, its figures say why and the section goes on."""
    assert callable(work)
    try:
        work()
    except Exception as exc:  # recorded in the report, like a failed section
        why = f"failed: {type(exc).__name__}: {exc}"
        res.notes.append(f"sync: {why}")
        for key, point, name, unit in figures:
            if not res.figures.get(key) or not res.figures[key].samples:
                res.figures.pop(key, None)
                res.not_measured(key, point, name, unit, why)


def run(res: Results, procs: Procs, quick: bool) -> None:
    purchase = PurchasePlan(reps=2, purchases=8) if quick else PurchasePlan()
    quick_load = sync_load.LoadPlan(agents=2000, reports=4, intervals=5)
    load = quick_load if quick else sync_load.LoadPlan()
    run_plans(res, procs, purchase, load)
    _part(res, DURABLE, lambda: durability.run(res, procs, quick))


def run_purchase(res: Results, procs: Procs, quick: bool) -> None:
    """Only the purchase-to-first-byte part (`--only purchase`), with its targets."""
    plan = PurchasePlan(reps=2, purchases=8) if quick else PurchasePlan()
    _part(res, PURCHASE, lambda: measure_purchase(res, procs, plan))
    judge_purchase(res)


def run_plans(res: Results, procs: Procs, purchase: PurchasePlan, load: sync_load.LoadPlan) -> None:
    """Both parts with the given sizes, then the target lines."""
    _part(res, PURCHASE, lambda: measure_purchase(res, procs, purchase))
    _part(res, LOAD, lambda: measure_load(res, procs, load))
    _part(res, LOAD_PG, lambda: measure_load_pg(res, procs, load))
    for key, backend in (("sync.ingest", "SQLite"), ("sync.ingest.pg", "PostgreSQL")):
        got = res.figures.get(key)
        rate = got.median if got is not None and got.samples else None
        res.targets.append(
            Target(
                name=f"ingestion of a {load.agents:,}-agent report, {backend}",
                goal=">= 50,000 agent-deltas/s",
                value="-" if rate is None else f"{rate:,.0f} agent-deltas/s",
                met=None if rate is None else rate >= 50_000,
                note="not measured" if rate is None else "median of back-to-back reports",
            )
        )
    judge_purchase(res)


def judge_purchase(res: Results) -> None:
    """Resume after a purchase: under 100 ms, and (issue 13) at most 3 x the call's own trip."""
    ratio = res.ratio(
        "package purchase to first byte p99 / the purchase call alone",
        "resume.purchase.p99",
        "resume.purchase.http",
    )
    res.targets.append(
        Target(
            name="resume after a package purchase, p99, against the purchase call",
            goal="<= 3 x",
            value="-" if ratio is None else f"{ratio:.2f} x",
            met=None if ratio is None else ratio <= 3,
        )
    )
    fig = res.figures.get("resume.purchase.p99")
    value = fig.median if fig is not None else None
    worst = max(fig.samples) if fig is not None and fig.samples else None
    res.targets.append(
        Target(
            name="resume after a package purchase, p99",
            goal="< 100 ms",
            value="-" if value is None else f"{value:.1f} ms",
            met=None if value is None else value < 100,
            note="not measured"
            if worst is None
            else f"median of repetitions; worst {worst:.1f} ms",
        )
    )
