"""The embedded quota agent against a real billing API, and against one that fails."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from quota.agent.client import BillingClient
from quota.agent.errors import JournalError
from quota.agent.journal import Journal
from quota.agent.sync import QuotaAgent, SyncSettings, wall_ms
from quota.billing.server import BillingServer
from quota.contract import wire
from quota.core.relay_sync import Holding
from tests.billing.api import RELAY, Api, make_config
from tests.rigs.sync_proxy import SyncProxy
from tests.rigs.waits import poll


class Host:
    """The relay side as the quota agent sees it, driven by the test: counters in, leases out."""

    def __init__(self) -> None:
        self.used: Counter[tuple[str, str]] = Counter()
        self.leased: Counter[str] = Counter()
        self.status: dict[str, bool] = {}
        self.short: dict[str, int] = {}
        self.agents: list[wire.RelayAgent] = []
        self.taken_back: Counter[str] = Counter()
        self.low_water: dict[str, int] = {}

    def usage(self) -> dict[tuple[str, str], int]:
        return dict(self.used)

    def tunnel_time(self) -> dict[tuple[str, str], int]:
        return {}

    def holdings(self) -> dict[str, Holding]:
        return {a: Holding(short=n, streams=1) for a, n in self.short.items()}

    def add_lease(self, agent_id: str, nbytes: int) -> None:
        self.leased[agent_id] += nbytes

    def set_status(self, agent_id: str, active: bool) -> None:
        self.status[agent_id] = active

    def take_back(self, agent_id: str, nbytes: int) -> int:
        back = min(nbytes, self.leased[agent_id])
        self.leased[agent_id] -= back
        self.taken_back[agent_id] += back
        return back

    def set_low_water(self, agent_id: str, nbytes: int) -> None:
        self.low_water[agent_id] = nbytes

    def lease_answered(self, agent_id: str, exhausted: bool) -> None:
        pass

    def drop_lease(self, agent_id: str) -> int:
        dropped, self.leased[agent_id] = self.leased[agent_id], 0
        return dropped

    def set_agents(self, agents: list[wire.RelayAgent]) -> None:
        self.agents = agents


@pytest.fixture
async def billing(tmp_path: Path) -> AsyncIterator[tuple[BillingServer, Api]]:
    async with (
        BillingServer(make_config(tmp_path / "b"), maintenance=False) as server,
        aiohttp.ClientSession() as session,
    ):
        yield server, Api(session, server.url)


@asynccontextmanager
async def quota_agent(
    path: Path, url: str, host: Host, timeout_s: float = 1, **settings: Any
) -> AsyncIterator[QuotaAgent]:
    async with Journal(path) as journal, BillingClient(url, RELAY, timeout_s=timeout_s) as client:
        yield QuotaAgent(host, journal, client, SyncSettings(**settings))


async def subscribed_agents(api: Api, count: int) -> list[str]:
    """An account with coin and `count` client agents on plan "pro"; their ids."""
    account_id, token = await api.account()
    await api.deposit(account_id, 10**9, "p1")
    ids = []
    for i in range(count):
        agent = await api.agent(account_id, token, name=f"a{i}")
        await api.ok("POST", f"/v1/agents/{agent['id']}/subscription", body={"plan": "pro"})
        ids.append(agent["id"])
    return ids


async def agent_usage(api: Api, agent_id: str) -> int:
    got = await api.ok("GET", f"/v1/agents/{agent_id}")
    return 10 * 10**9 - int(got["traffic_remaining"])  # plan "pro" holds 10 GB


async def test_usage_reported_once_and_leases_applied(
    tmp_path: Path, billing: tuple[BillingServer, Api]
) -> None:
    """A round reports deltas under a number, gets a lease, and a repeat reports nothing twice."""
    server, api = billing
    (agent_id,) = await subscribed_agents(api, 1)
    host = Host()
    async with quota_agent(tmp_path / "j.db", server.url, host) as quota:
        host.used[(agent_id, "t1")] = 1234
        host.short[agent_id] = 500
        await quota.round()
        assert host.leased[agent_id] >= 500 and host.status[agent_id] is True
        leased = host.leased[agent_id]
        host.short.clear()
        await quota.round()
        host.used[(agent_id, "t1")] = 2000
        await quota.round()
        assert host.leased[agent_id] == leased  # nothing asked, nothing granted twice
        assert await quota.journal.pending_count() == 0
    assert await agent_usage(api, agent_id) == 2000


class Failing:
    """A billing API stand-in on 127.0.0.1 that fails in the chosen way, or forwards."""

    def __init__(self, target: str) -> None:
        self.mode = "forward"
        self.target = target
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Failing:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.mode == "slow":
            await asyncio.sleep(3)  # slower than the client's 1 s timeout: the case under test
        if self.mode in ("slow", "error"):
            return web.json_response({"error": "overloaded"}, status=503)
        if self.mode == "garbage":
            return web.Response(text="<html>not json</html>", content_type="text/html")
        if self.mode == "wrong":
            return web.json_response({"seq": "seven", "unexpected": True})
        body = await request.read()
        headers = {"Authorization": request.headers["Authorization"]}
        if request.content_type:
            headers["Content-Type"] = request.content_type
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, self.target + request.path_qs, data=body, headers=headers
            ) as resp,
        ):
            return web.Response(
                status=resp.status, body=await resp.read(), content_type="application/json"
            )


@pytest.mark.parametrize("mode", ["slow", "error", "garbage", "wrong"])
async def test_billing_failures_keep_counts_then_catch_up_exactly(
    tmp_path: Path, billing: tuple[BillingServer, Api], mode: str
) -> None:
    """Slow, failing or garbled answers leave the report queued; it is applied once later."""
    server, api = billing
    (agent_id,) = await subscribed_agents(api, 1)
    host = Host()
    async with (
        Failing(server.url) as failing,
        quota_agent(tmp_path / "j.db", failing.url, host) as quota,
    ):
        failing.mode = mode
        host.used[(agent_id, "t1")] = 5000
        host.short[agent_id] = 100
        await quota.round()
        assert quota.counters["sync_failures"] == 1 and not quota.online
        assert await quota.journal.pending_count() == 1 and host.leased[agent_id] == 0
        host.used[(agent_id, "t1")] = 7000
        await quota.flush()  # counting goes on while the API is away
        failing.mode = "forward"
        quota.retry_now()  # skip the backoff wait rather than sleep through it
        await quota.send()
        assert await quota.journal.pending_count() == 0 and quota.online
        assert host.leased[agent_id] > 0
    assert await agent_usage(api, agent_id) == 7000


async def test_billing_down_is_a_counter_and_a_log_line_not_a_crash(tmp_path: Path) -> None:
    """Nothing listening: the round fails softly and the report waits in the journal."""
    host = Host()
    async with quota_agent(tmp_path / "j.db", "http://127.0.0.1:9", host) as quota:
        host.used[("agt_x", "t")] = 10
        await quota.round()
        host.used[("agt_x", "t")] = 20
        await quota.round()
        assert quota.counters["sync_failures"] == 1  # the second round waited for its backoff
        assert await quota.journal.pending_count() == 2


async def test_restart_restores_unused_lease_and_resends_unacked(
    tmp_path: Path, billing: tuple[BillingServer, Api]
) -> None:
    """A new process puts back the lease left unused and sends queued reports once."""
    server, api = billing
    (agent_id,) = await subscribed_agents(api, 1)
    host = Host()
    async with quota_agent(tmp_path / "j.db", server.url, host) as quota:
        host.short[agent_id] = 1_000_000
        await quota.round()
        granted = host.leased[agent_id]
        host.used[(agent_id, "t")] = 300_000
        await quota.flush()  # written, never sent: the process dies here
    fresh = Host()
    async with quota_agent(tmp_path / "j.db", server.url, fresh) as quota:
        await quota.restore()
        assert fresh.leased[agent_id] == granted - 300_000
        await quota.send()
        assert await quota.journal.pending_count() == 0
    assert await agent_usage(api, agent_id) == 300_000


async def test_a_thousand_agents_make_one_request_per_interval(
    tmp_path: Path, billing: tuple[BillingServer, Api]
) -> None:
    """1,000 active agents are reported in one request per round, each agent once."""
    server, api = billing
    ids = await subscribed_agents(api, 1000)
    host = Host()
    async with (
        SyncProxy(server.url) as proxy,
        quota_agent(tmp_path / "j.db", proxy.url, host, timeout_s=30) as quota,
    ):
        for round_no in range(1, 4):
            for agent_id in ids:
                host.used[(agent_id, "t")] = 1000 * round_no
            await quota.round()
        assert quota.counters["sync_failures"] == 0
        assert len(proxy.syncs) == 3
        assert [len(body["items"]) for _, body in proxy.syncs] == [1000, 1000, 1000]
        assert sorted({item["agent_id"] for item in proxy.syncs[0][1]["items"]}) == sorted(ids)
    assert await agent_usage(api, ids[0]) == 3000


@pytest.mark.parametrize(("policy", "expect"), [("pause", 0), ("continue", 50_000)])
async def test_offline_policy_pause_or_continue_up_to_the_allowance(
    tmp_path: Path, policy: str, expect: int
) -> None:
    """Billing unreachable and a bucket dry: pause grants nothing, continue up to the allowance."""
    host = Host()
    async with quota_agent(
        tmp_path / "j.db",
        "http://127.0.0.1:9",
        host,
        offline_policy=policy,
        offline_allowance=50_000,
    ) as quota:
        host.short["agt_a"] = 30_000
        await quota.round()  # learns the billing API is away
        quota.retry_now()
        await quota.round()  # the whole allowance at once, not one held chunk a round
        assert host.leased["agt_a"] == expect
        for _ in range(2):
            quota.retry_now()
            await quota.round()
        assert host.leased["agt_a"] == expect
        assert quota.counters["offline_bytes"] == expect


async def test_offline_bytes_are_netted_out_exactly_when_billing_returns(
    tmp_path: Path, billing: tuple[BillingServer, Api]
) -> None:
    """After the outage the relay holds what billing granted minus every byte used, to the byte."""
    server, api = billing
    (agent_id,) = await subscribed_agents(api, 1)
    host = Host()
    settings = {"offline_policy": "continue", "offline_allowance": 50_000, "min_want": 100_000}
    async with (
        Failing(server.url) as failing,
        quota_agent(tmp_path / "j.db", failing.url, host, **settings) as quota,
    ):
        failing.mode = "error"
        host.short[agent_id] = 30_000
        await quota.round()  # learns the billing API is away
        quota.retry_now()
        await quota.round()
        assert host.leased[agent_id] == 50_000
        host.used[(agent_id, "t1")] = 45_000  # relayed on the offline allowance
        failing.mode = "forward"
        quota.retry_now()
        await quota.round()
        assert quota.online and await quota.journal.pending_count() == 0
        granted = (await quota.journal.leases())[agent_id].applied_total
        assert granted >= 30_000 + 100_000
        assert host.leased[agent_id] == granted  # offline bytes paid back out of the grant
        assert quota.counters["offline_bytes"] == 50_000
    assert await agent_usage(api, agent_id) == 45_000  # billed = counted


async def test_agent_registry_is_cached_so_an_outage_locks_no_one_out(
    tmp_path: Path, billing: tuple[BillingServer, Api]
) -> None:
    """Agents fetched once are restored from the journal when the billing API is away."""
    server, api = billing
    await subscribed_agents(api, 2)
    host = Host()
    async with quota_agent(tmp_path / "j.db", server.url, host, registry_refresh_ms=60_000) as q:
        task = asyncio.create_task(q._registry_loop())
        try:
            await poll(lambda: len(host.agents) == 2, "the first registry fetch")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    offline = Host()
    async with quota_agent(tmp_path / "j.db", "http://127.0.0.1:9", offline) as quota:
        await quota.restore()
    assert sorted(a.id for a in offline.agents) == sorted(a.id for a in host.agents)


async def test_a_lease_not_renewed_in_time_is_dropped_not_returned(
    tmp_path: Path, billing: tuple[BillingServer, Api]
) -> None:
    """Past its valid_until a lease is dropped locally, and a restart does not restore it."""
    server, api = billing
    (agent_id,) = await subscribed_agents(api, 1)
    host = Host()
    async with quota_agent(tmp_path / "j.db", server.url, host) as quota:
        host.short[agent_id] = 1000
        await quota.round()
        assert host.leased[agent_id] > 0
        later = wall_ms() + 86_400_000  # a day later, long after the lease's end
        quota.clock_ms = lambda: later
        quota.client.url = "http://127.0.0.1:9"
        await quota.expire()
        assert host.leased[agent_id] == 0 and quota.counters["lease_bytes_expired"] > 0
    fresh = Host()
    async with quota_agent(tmp_path / "j.db", server.url, fresh) as quota:
        await quota.restore()
    assert fresh.leased[agent_id] == 0


async def test_a_journal_that_cannot_open_is_named(tmp_path: Path) -> None:
    """A journal path that is a folder fails with the file named, not a sqlite traceback."""
    (tmp_path / "j.db").mkdir()
    with pytest.raises(JournalError, match=r"cannot open the journal .*j\.db"):
        async with Journal(tmp_path / "j.db"):
            pass


class Recording(Failing):
    """The failing stand-in that also keeps every /v1/sync body exactly as it arrived."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.bodies: list[bytes] = []

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/sync":
            self.bodies.append(await request.read())
        return await super()._handle(request)


async def test_a_report_is_resent_byte_for_byte_under_its_number(
    tmp_path: Path, billing: tuple[BillingServer, Api]
) -> None:
    """A report that failed goes out again as the same bytes, numbered before it was stored."""
    server, api = billing
    (agent_id,) = await subscribed_agents(api, 1)
    host = Host()
    async with (
        Recording(server.url) as proxy,
        quota_agent(tmp_path / "j.db", proxy.url, host) as quota,
    ):
        proxy.mode = "error"
        host.used[(agent_id, "t1")] = 5000
        await quota.round()
        (stored,) = await quota.journal.pending()
        proxy.mode = "forward"
        quota.retry_now()
        await quota.send()
        assert proxy.bodies == [stored[1], stored[1]]
        assert json.loads(stored[1])["seq"] == stored[0] == 1
    assert await agent_usage(api, agent_id) == 5000


def _try_begin(conn: sqlite3.Connection) -> bool:
    """Take the write lock if the journal is not writing right now (it writes often)."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError:
        return False
    return True


async def test_a_storage_error_does_not_end_the_sync_loop(
    tmp_path: Path, billing: tuple[BillingServer, Api]
) -> None:
    """A locked journal is a counted error the loop outlives; freed, the usage arrives once."""
    server, api = billing
    (agent_id,) = await subscribed_agents(api, 1)
    host, path = Host(), tmp_path / "j.db"
    async with quota_agent(path, server.url, host, interval_ms=50) as quota:
        await quota.journal.db.execute("PRAGMA busy_timeout = 20")  # fail fast while locked
        host.short[agent_id] = 1000
        running = asyncio.create_task(quota.run())
        other = sqlite3.connect(path, isolation_level=None, timeout=0)  # never block the loop
        try:
            await poll(lambda: host.leased[agent_id] > 0, "a first lease")
            host.short.clear()
            await poll(lambda: _try_begin(other), "the journal's write lock")  # another writer
            host.used[(agent_id, "t1")] = 5000
            day = 86_400_000  # a day on: the lease expires, and dropping it is a journal write
            quota.clock_ms = lambda: wall_ms() + day
            await poll(
                lambda: quota.counters["journal_errors"] >= 2 or running.done(), "journal errors"
            )
            assert not running.done()
            other.execute("ROLLBACK")

            async def delivered() -> bool:
                return await quota.journal.pending_count() == 0 and (
                    await agent_usage(api, agent_id) >= 5000
                )

            await poll(delivered, "the report held back by the lock")
            assert not running.done()
        finally:
            other.close()
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    assert await agent_usage(api, agent_id) == 5000


async def test_a_package_bought_while_a_stream_waits_arrives_on_the_push_and_survives_a_restart(
    tmp_path: Path, billing: tuple[BillingServer, Api]
) -> None:
    """The push brings the package's bytes with no report; journaled, a restart restores them."""
    server, api = billing
    (agent_id,) = await subscribed_agents(api, 1)  # plan "pro": 10 GB
    host = Host()
    async with quota_agent(tmp_path / "j.db", server.url, host, interval_ms=60_000) as quota:
        host.short[agent_id] = 20 * 10**9  # more than the agent has: billing gives all it has
        await quota.round()
        assert host.leased[agent_id] == 10 * 10**9
        host.short.clear()  # the stream stopped asking; billing still knows what it lacked
        loop = asyncio.create_task(quota.run())
        try:
            await poll(lambda: quota.counters["push_events"] >= 1, "the push channel's hello")
            await api.ok("POST", f"/v1/agents/{agent_id}/packages", body={"package": "1G"})
            await poll(lambda: host.leased[agent_id] == 11 * 10**9, "the package's bytes")
            assert quota.counters["leases_pushed"] == 1
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        assert (await quota.journal.leases())[agent_id].applied_total == 11 * 10**9
    fresh = Host()  # the process died with the lease unused: the journal holds it
    async with quota_agent(tmp_path / "j.db", server.url, fresh) as quota:
        await quota.restore()
        assert fresh.leased[agent_id] == 11 * 10**9


async def test_next_round_waits_for_a_round_begun_after_it_and_no_longer_than_its_cap(
    tmp_path: Path, billing: tuple[BillingServer, Api]
) -> None:
    """A new tunnel's wait: a whole round begun after the call; a round slower than 2 s, not."""
    server, api = billing
    (agent_id,) = await subscribed_agents(api, 1)
    host = Host()
    host.short[agent_id] = 1000  # every round has a report to send
    async with (
        Failing(server.url) as proxy,
        quota_agent(tmp_path / "j.db", proxy.url, host, timeout_s=10, interval_ms=60_000) as quota,
    ):
        loop = asyncio.create_task(quota.run())
        try:
            before = sum(quota.round_times.counts)
            await asyncio.wait_for(quota.next_round(), 30)
            assert sum(quota.round_times.counts) > before and host.leased[agent_id] > 0
            await poll(lambda: quota._begun == quota._ended, "no round under way")
            proxy.mode = "slow"  # 3 s a request: past the 2 s cap, within the client's 10 s
            await asyncio.wait_for(quota.next_round(), 30)
            assert quota._ended < quota._begun  # it returned with its round under way
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
