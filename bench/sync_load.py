"""Point 7: 10,000 agents on one relay, synced with a real billing API process.

The relay side runs in this process: the real `QuotaAgent` (its journal, billing
client, push and registry loops) over a `Fleet` host that holds 1,000 agents'
counters, the way tests/agent drives it; no SSH and no sockets to agents. The
billing API is a `quotarelay billing serve` process; every request between the
two passes a counting proxy in this process.

Invariants:
- The agents (10,000: 1,000 accounts of 10 client agents on plan "pro") are
  registered and subscribed through the billing admin API over HTTP before the
  quota agent starts, so no registration is counted in a window. The
  ingestion figure sends every agent's delta in one report; the window that
  counts requests and CPU has only the first `window_agents` (1,000) relaying.
- A fleet agent never uses more than its lease holds (a relay never forwards
  beyond its grants), and it nudges the quota agent when it falls below its low
  water, as the relay's hub does: extra syncs in a window are the real behaviour.
- Billing CPU is read from /proc (all threads) around exactly what is measured.
- Everything opened here is closed, also when a measurement fails.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.stats import cpu_seconds
from quota.agent.client import BillingClient
from quota.agent.journal import Journal
from quota.agent.sync import Holding, QuotaAgent, SyncSettings
from quota.contract import wire
from tests.rigs.billing import ADMIN, RELAY_TOKEN

LOW_WATER = 1_000_000
MEAN_USE = 100_000  # bytes per agent per interval: 1,000 agents, ~100 MB/s through the relay


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadPlan:
    agents: int = 10_000  # registered; each ingestion report holds all of them
    window_agents: int = 1000  # relaying in the window of requests and CPU
    per_account: int = 10
    interval_ms: int = 1000
    reports: int = 10  # back-to-back reports timed for the ingestion rate
    intervals: int = 10  # the window over which requests and CPU are counted


def fake_public_key(rng: random.Random) -> str:
    """A well-formed ssh-ed25519 public key line (random key bytes, never used to log in)."""
    kind = b"ssh-ed25519"
    blob = len(kind).to_bytes(4, "big") + kind + (32).to_bytes(4, "big") + rng.randbytes(32)
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} bench"


class Fleet:
    """The relay side as the quota agent sees it: one tunnel per agent, counters and leases."""

    def __init__(self, ids: list[str], seed: int = 17) -> None:
        self.ids = ids  # the agents that relay (`traffic`); every agent gets a lease
        self.all = list(ids)
        self.rng = random.Random(seed)
        self.used: Counter[str] = Counter()
        self.leased: Counter[str] = Counter()
        self.active: dict[str, bool] = {}
        self.nudge: Callable[[], None] = lambda: None
        self.registry = 0
        self.nudges = 0

    def remaining(self, agent_id: str) -> int:
        return self.leased[agent_id] - self.used[agent_id]

    def traffic(self) -> int:
        """One interval of use by every agent, within its lease; nudge if one ran low."""
        moved, low = 0, False
        for agent_id in self.ids:
            left = self.remaining(agent_id)
            use = min(left, self.rng.randint(1, 2 * MEAN_USE))
            self.used[agent_id] += use
            moved += use
            low = low or (left >= LOW_WATER > left - use)
        if low:
            self.nudges += 1
            self.nudge()
        return moved

    # -- QuotaHost ----------------------------------------------------------------
    def usage(self) -> dict[tuple[str, str], int]:
        return {(a, "t"): n for a, n in self.used.items()}

    def tunnel_time(self) -> dict[tuple[str, str], int]:
        return {}

    def holdings(self) -> dict[str, Holding]:
        """Every agent holds a stream; one below LOW_WATER has it waiting for the difference."""
        held = {}
        for agent_id in self.all:
            left = max(0, self.remaining(agent_id))
            short = LOW_WATER - left if left < LOW_WATER else 0
            held[agent_id] = Holding(remaining=left, short=short, streams=1)
        return held

    def add_lease(self, agent_id: str, nbytes: int) -> None:
        self.leased[agent_id] += nbytes

    def set_status(self, agent_id: str, active: bool) -> None:
        self.active[agent_id] = active

    def take_back(self, agent_id: str, nbytes: int) -> int:
        back = min(nbytes, max(0, self.remaining(agent_id)))
        self.leased[agent_id] -= back
        return back

    def set_low_water(self, agent_id: str, nbytes: int) -> None:
        pass  # the simulated agents nudge at LOW_WATER

    def lease_answered(self, agent_id: str, exhausted: bool) -> None:
        pass

    def drop_lease(self, agent_id: str) -> int:
        dropped = max(0, self.remaining(agent_id))
        self.leased[agent_id] -= dropped
        return dropped

    def set_agents(self, agents: list[wire.RelayAgent]) -> None:
        self.registry = len(agents)


@dataclass(slots=True)
class Seen:
    at: float
    path: str
    sent: int  # request body bytes
    answered: int  # answer body bytes


class CountingProxy:
    """Forwards every HTTP request to the billing API and records its path and sizes."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.seen: list[Seen] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> CountingProxy:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def count(self, path: str, since: float = 0.0) -> int:
        return sum(1 for s in self.seen if s.path == path and s.at >= since)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        if request.path == "/v1/relay/events":  # the push channel is not proxied: no pushes
            raise web.HTTPNotFound()
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization",)}
        if request.content_type:
            headers["Content-Type"] = request.content_type
        async with self._session.request(
            request.method, self.target + request.path_qs, data=body, headers=headers
        ) as resp:
            answer = await resp.read()
            status = resp.status
        self.seen.append(Seen(time.monotonic(), request.path, len(body), len(answer)))
        return web.Response(status=status, body=answer, content_type="application/json")


async def register(url: str, plan: LoadPlan, seed: int = 18) -> list[str]:
    """Accounts and subscribed client agents through the admin API; the agents' ids."""
    rng = random.Random(seed)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    gate = asyncio.Semaphore(8)
    keys = iter(range(1, 10**9))

    async def call(session: aiohttp.ClientSession, path: str, body: Any) -> Any:
        headers = {**auth, "Idempotency-Key": f"load-{next(keys)}"}
        async with gate, session.post(url + path, json=body, headers=headers) as resp:
            data = await resp.json()
            if resp.status >= 300:
                raise RuntimeError(f"POST {path}: HTTP {resp.status}: {data}")
            return data

    async def account(session: aiohttp.ClientSession, a: int) -> list[str]:
        got = await call(session, "/v1/accounts", {"name": f"fleet-{a}"})
        account_id = got["account"]["id"]
        pay = {"account_id": account_id, "payment_id": f"fleet-pay-{a}", "amount": 10**9}
        await call(session, "/v1/deposits", pay)
        ids = []
        for i in range(plan.per_account):
            body = {"name": f"a{i}", "role": "client", "public_keys": [fake_public_key(rng)]}
            agent = await call(session, f"/v1/accounts/{account_id}/agents", body)
            await call(session, f"/v1/agents/{agent['id']}/subscription", {"plan": "pro"})
            ids.append(str(agent["id"]))
        return ids

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        groups = await asyncio.gather(
            *(account(session, a) for a in range(plan.agents // plan.per_account))
        )
    return [i for ids in groups for i in ids]


@dataclass(slots=True)
class LoadFigures:
    report_ms: list[float]  # time per report of every agent's delta, at the client
    ingest: list[float]  # agent-deltas per second, one sample per report
    report_cpu: list[float]  # billing CPU-s per report
    client_cpu: list[float]  # CPU-s per report of this process: quota agent and proxy
    requests: list[float]  # /v1/sync requests per interval
    request_bytes: list[float]  # body bytes per /v1/sync request in the window
    answer_bytes: list[float]
    cpu: list[float]  # billing CPU-s per interval
    other_requests: int  # registry fetches and the like in the window
    nudges: int  # intervals in the window in which an agent fell below its low water
    registered_s: float


@contextlib.asynccontextmanager
async def _quota(
    folder: Path, proxy: CountingProxy, fleet: Fleet, plan: LoadPlan
) -> AsyncIterator[QuotaAgent]:
    settings = SyncSettings(interval_ms=plan.interval_ms, registry_refresh_ms=30_000)
    async with (
        Journal(folder / "journal.db") as journal,
        BillingClient(proxy.url, RELAY_TOKEN, timeout_s=60) as client,
    ):
        quota = QuotaAgent(fleet, journal, client, settings)
        fleet.nudge = quota.nudge
        yield quota


async def _reports(
    quota: QuotaAgent, fleet: Fleet, pid: int, plan: LoadPlan
) -> tuple[list[float], ...]:
    """Back-to-back reports of every agent's delta: time, billing and client CPU per report."""
    ms, ingest, cpu, client = [], [], [], []
    for _ in range(plan.reports):
        fleet.traffic()
        await quota.flush()
        mine = cpu_seconds(os.getpid())
        c0, t0 = cpu_seconds(pid), time.perf_counter()
        await quota.send()
        took, used = time.perf_counter() - t0, cpu_seconds(pid) - c0
        client.append(cpu_seconds(os.getpid()) - mine)
        if not quota.online or await quota.journal.pending_count():
            raise RuntimeError(f"a report was not acknowledged: {dict(quota.counters)}")
        ms.append(took * 1000)
        ingest.append(len(fleet.ids) / took)
        cpu.append(used)
    return ms, ingest, cpu, client


async def _window(
    quota: QuotaAgent, fleet: Fleet, proxy: CountingProxy, pid: int, plan: LoadPlan
) -> tuple[list[float], list[float], int, int, float]:
    """The quota agent's own loops for warm-up plus N intervals; counts per interval."""
    every = plan.interval_ms / 1000
    requests: list[float] = []
    cpu: list[float] = []
    nudges = 0

    async def drive() -> None:
        while True:
            await asyncio.sleep(every)
            fleet.traffic()

    running = asyncio.create_task(quota.run(), name="bench-quota-agent")
    driving = asyncio.create_task(drive(), name="bench-fleet-traffic")
    try:
        await asyncio.sleep(2 * every)  # warm-up: the first registry fetch and lease round
        start, nudges = time.monotonic(), fleet.nudges
        mark, c = start, cpu_seconds(pid)
        for _ in range(plan.intervals):
            await asyncio.sleep(every)
            now, c_now = time.monotonic(), cpu_seconds(pid)
            requests.append(float(proxy.count("/v1/sync", mark) - proxy.count("/v1/sync", now)))
            cpu.append(c_now - c)
            mark, c = now, c_now
        others = sum(1 for s in proxy.seen if s.at >= start and s.path != "/v1/sync")
        nudges = fleet.nudges - nudges
    finally:
        for task in (driving, running):
            task.cancel()
        await asyncio.gather(driving, running, return_exceptions=True)
    if quota.counters["sync_failures"]:
        raise RuntimeError(f"sync failures in the window: {dict(quota.counters)}")
    return requests, cpu, others, nudges, start


async def measure(url: str, pid: int, folder: Path, plan: LoadPlan) -> LoadFigures:
    t0 = time.monotonic()
    ids = await register(url, plan)
    registered = time.monotonic() - t0
    fleet = Fleet(ids)
    async with CountingProxy(url) as proxy, _quota(folder, proxy, fleet, plan) as quota:
        await quota.round()  # every agent's first lease
        if sum(1 for a in ids if fleet.leased[a] > 0) != len(ids):
            raise RuntimeError(f"not every agent got a lease: {dict(quota.counters)}")
        ms, ingest, report_cpu, client_cpu = await _reports(quota, fleet, pid, plan)
        fleet.ids = ids[: plan.window_agents]
        requests, cpu, others, nudges, start = await _window(quota, fleet, proxy, pid, plan)
        in_window = [s for s in proxy.seen if s.path == "/v1/sync" and s.at >= start]
    return LoadFigures(
        report_ms=ms,
        ingest=ingest,
        report_cpu=report_cpu,
        client_cpu=client_cpu,
        requests=requests,
        request_bytes=[float(s.sent) for s in in_window],
        answer_bytes=[float(s.answered) for s in in_window],
        cpu=cpu,
        other_requests=others,
        nudges=nudges,
        registered_s=registered,
    )


def run(url: str, pid: int, folder: Path, plan: LoadPlan) -> LoadFigures:
    return asyncio.run(measure(url, pid, folder, plan))


def describe(fig: LoadFigures, plan: LoadPlan) -> dict[str, str]:
    """Notes for each figure: what was driven and how it was counted."""
    relay = (
        f"{plan.agents} agents ({plan.agents // plan.per_account} accounts of {plan.per_account},"
        f" {plan.window_agents} relaying in the window"
        " plan pro, registered through the admin API over HTTP in "
        f"{fig.registered_s:.0f} s); relay side in-process: the real QuotaAgent over a host"
        " holding the agents' counters (each uses 1-200 KB per interval within its lease and"
        " nudges a sync below 1 MB, as the hub does), against a `quotarelay billing serve`"
        " process"
    )
    window = f"{plan.intervals} intervals of {plan.interval_ms} ms after 2 of warm-up"
    answer = statistics.median(fig.answer_bytes) if fig.answer_bytes else 0
    return {
        "requests": f"{relay}; /v1/sync requests counted at a proxy per interval over {window}:"
        f" {sum(fig.requests):.0f} in all ({fig.nudges} low-water nudges, {fig.other_requests}"
        " other requests; the push channel is not proxied, so it is off). Rounds keep a fixed"
        " cadence; one that takes longer than its interval skips the next slot",
        "bytes": f"request bodies of the window's /v1/sync requests (answers: median"
        f" {answer:,.0f} bytes); {relay}",
        "cpu": f"billing process CPU (all threads, /proc schedstat) per interval over {window}",
        "ingest": f"{plan.reports} back-to-back reports, each with all {plan.agents} agents'"
        " usage deltas (plus lease requests of those low): agents per report / time per report"
        f" at the client (HTTP on loopback included); median time per report"
        f" {statistics.median(fig.report_ms):.0f} ms, billing CPU per report median"
        f" {statistics.median(fig.report_cpu):.2f} s, client CPU per report (the quota agent"
        " and the counting proxy, one process) median"
        f" {statistics.median(fig.client_cpu):.2f} s; {os.cpu_count()} cores shared with the"
        " client",
    }
