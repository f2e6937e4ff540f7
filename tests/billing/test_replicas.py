"""Replicas: several billing services on one database apply each relay report once.

Each test runs on SQLite (one file, several connections) and on PostgreSQL
(one database, several pools): the rules are the store's, not the backend's.
"""

from __future__ import annotations

import asyncio
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from quota.billing import repo
from quota.billing.clock import ManualClock
from quota.billing.push import FAN_OUT_IDS, PushHub
from quota.billing.server import BillingServer
from quota.billing.store import open_store
from quota.contract import wire
from quota.core.billing import EntryKind
from tests.billing.api import RELAY, RELAY2, Api, make_config
from tests.rigs.billing import RELAY_TOKEN, Billing
from tests.rigs.postgres import TestDatabase
from tests.rigs.waits import poll

G = 10**9
M = 10**6


async def _paying(api: Api) -> tuple[str, str]:
    """An account with 5 coins and one client agent on the 1 GB "basic" plan."""
    acc, token = await api.account()
    await api.deposit(acc, 5_000, f"pay-{acc}")
    agent = await api.agent(acc, token)
    await api.ok("POST", f"/v1/agents/{agent['id']}/subscription", token, {"plan": "basic"})
    return acc, agent["id"]


def _once_each(answers: list[tuple[Any, dict[str, Any]]]) -> None:
    """Each report key was applied by exactly one request; the others got its answer back."""
    by_key: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for key, answer in answers:
        by_key[key].append(answer)
    for key, got in by_key.items():
        first = [a for a in got if not a["duplicate"]]
        assert len(first) == 1, (key, got)
        assert all(a == {**first[0], "duplicate": True} for a in got if a["duplicate"]), key


async def test_two_replicas_apply_concurrent_duplicates_once_and_keep_leases_payable(
    tmp_path: Path, clock: ManualClock, database: str
) -> None:
    """Two relays' reports, each sent three times at once to two replicas: applied once each."""
    config = make_config(tmp_path, database=database)
    async with (
        BillingServer(config, clock=clock, maintenance=False) as one,
        BillingServer(config, clock=clock, maintenance=False) as two,
        aiohttp.ClientSession() as session,
    ):
        apis = [Api(session, one.url), Api(session, two.url)]
        acc, agt = await _paying(apis[0])

        async def send(api: Api, token: str, seq: int) -> tuple[Any, dict[str, Any]]:
            body = {
                "seq": seq,
                "items": [{"agent_id": agt, "tunnel_id": "t", "bytes": M}],
                "leases": [{"agent_id": agt, "want": 300 * M}],
            }
            return (token, seq), await api.ok("POST", "/v1/sync", token, body)

        jobs = [
            send(api, token, seq)
            for seq in range(1, 9)
            for token in (RELAY, RELAY2)
            for api in (apis[0], apis[1], apis[0])
        ]
        _once_each(await asyncio.gather(*jobs))
        agent = await apis[1].ok("GET", f"/v1/agents/{agt}")
        assert agent["traffic_remaining"] == G - 16 * M
        clock.advance(3_600_000)  # the hour's traffic becomes its one ledger entry
        await two.service.maintenance.run()
        page = await apis[1].ok("GET", f"/v1/accounts/{acc}/ledger", params={"limit": "1000"})
        assert sum(e["used_bytes"] for e in page["entries"]) == 16 * M
        assert await apis[0].balance(acc) == sum(e["amount"] for e in page["entries"])
        async with two.store.reading() as tx:
            assert await repo.outstanding(tx, agt, clock.now_ms()) <= G - 16 * M


async def test_two_billing_processes_one_killed_nothing_lost_nothing_double(
    tmp_path: Path, database: str
) -> None:
    """Reports raced to two processes, one SIGKILLed mid-stream, all resent: billed exactly once."""
    folders = [tmp_path / "r1", tmp_path / "r2"]
    replicas = [Billing(f, plan_traffic=G, database=database) for f in folders]
    try:
        for folder, replica in zip(folders, replicas, strict=True):
            folder.mkdir()
            await replica.start()
        first, second = replicas
        acc = await first.account("acme", 5_000)
        agent = await second.agent(tmp_path, acc, "nas", "client")
        await first.api("POST", f"/v1/agents/{agent.agent_id}/subscription", {"plan": "small"})

        async def send(replica: Billing, seq: int) -> tuple[int, dict[str, Any]]:
            body = {"seq": seq, "items": [{"agent_id": agent.agent_id, "bytes": 1_000 + seq}]}
            return seq, await replica.api("POST", "/v1/sync", body, token=RELAY_TOKEN)

        answers = await asyncio.gather(*(send(r, s) for s in range(1, 21) for r in replicas))
        _once_each(list(answers))
        doomed = [asyncio.create_task(send(first, s)) for s in range(21, 61)]
        await asyncio.wait(doomed, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        await first.stop(signal.SIGKILL)  # with the other reports still in flight
        await asyncio.gather(*doomed, return_exceptions=True)  # which were applied is unknown
        retried = await asyncio.gather(*(send(second, s) for s in range(1, 61)))
        assert sum(1 for _, a in retried if not a["duplicate"]) < 40  # the killed one applied some
        used = await second.usage_total(acc, agent.agent_id)
        assert used == sum(1_000 + s for s in range(1, 61))
    finally:
        for replica in replicas:
            await replica.close()


async def _events(session: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(
        url + "/v1/relay/events", headers={"Authorization": f"Bearer {RELAY}"}
    )
    assert wire.parse(wire.PushEvent, await ws.receive_json(timeout=5)).type == "hello"
    return ws


async def test_a_change_committed_on_one_replica_is_pushed_by_every_replica(
    tmp_path: Path, clock: ManualClock, postgresql_db: TestDatabase
) -> None:
    """PostgreSQL: a purchase through replica one reaches relays on both replicas, once each."""
    config = make_config(tmp_path, database=postgresql_db.fresh_url())
    async with (
        BillingServer(config, clock=clock, maintenance=False) as one,
        BillingServer(config, clock=clock, maintenance=False) as two,
        aiohttp.ClientSession() as session,
    ):
        api, api2 = Api(session, one.url), Api(session, two.url)
        acc, agt = await _paying(api)
        await api.deposit(acc, 5_000, "more")  # before any relay listens
        near, far = await _events(session, one.url), await _events(session, two.url)
        await api.ok("POST", f"/v1/agents/{agt}/packages", body={"package": "1G"})
        await api2.ok("PATCH", f"/v1/agents/{agt}", body={"allow_metered": True}, key="on-two")
        for ws in (near, far):  # each change once, in commit order, whichever replica made it
            got = [wire.parse(wire.PushEvent, await ws.receive_json(timeout=5)) for _ in "ab"]
            assert [(e.agent_ids, e.reason) for e in got] == [
                ([agt], "package"),
                ([agt], "settings"),
            ]
            await ws.close()


async def test_a_lost_listen_connection_comes_back_and_pushes_again(
    tmp_path: Path, clock: ManualClock, postgresql_db: TestDatabase
) -> None:
    """PostgreSQL: LISTEN backends terminated, replicas listen again and push other's changes."""
    config = make_config(tmp_path, database=postgresql_db.fresh_url())
    listeners = (
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN %'"
        " AND NOT (pid = ANY($2::int[]))"
    )
    async with (
        BillingServer(config, clock=clock, maintenance=False) as one,
        BillingServer(config, clock=clock, maintenance=False) as two,
        aiohttp.ClientSession() as session,
    ):
        api = Api(session, one.url)
        acc, agt = await _paying(api)
        await api.deposit(acc, 5_000, "more")  # before any relay listens
        far = await _events(session, two.url)
        conn = await asyncpg.connect(postgresql_db.url)
        try:
            pids = [r[0] for r in await conn.fetch(listeners, postgresql_db.name, [])]
            assert len(pids) == 2
            for pid in pids:
                await conn.execute("SELECT pg_terminate_backend($1)", pid)

            async def back() -> bool:
                return len(await conn.fetch(listeners, postgresql_db.name, pids)) == 2

            await poll(back, "both replicas to listen again", timeout=20)
        finally:
            await conn.close()
        await api.ok("POST", f"/v1/agents/{agt}/packages", body={"package": "1G"})
        got = wire.parse(wire.PushEvent, await far.receive_json(timeout=5))
        assert (got.agent_ids, got.reason) == ([agt], "package")
        await far.close()


async def test_ledger_pages_never_skip_an_entry_committed_late(
    postgresql_db: TestDatabase,
) -> None:
    """PostgreSQL: two replicas write one account's ledger at once; a cursor sees every entry."""
    url = postgresql_db.fresh_url()
    account = repo.AccountRow(
        id="acc_late",
        name="late",
        balance=0,
        version=0,
        frozen=False,
        frozen_reason=None,
        low_notice_at=None,
        created_at=0,
    )
    traffic = repo.Posting(kind=EntryKind.TRAFFIC, reason="zero-amount entry")
    async with open_store(url) as one, open_store(url) as two:
        async with one.transaction() as tx:
            await repo.create_account(tx, account, "hash-late")
        first_in, release = asyncio.Event(), asyncio.Event()

        async def early() -> None:  # takes the lower id, commits last
            async with one.transaction() as tx:
                await repo.post(tx, account, traffic, key="early", at=1)
                first_in.set()
                await release.wait()

        async def late() -> None:
            async with two.transaction() as tx:
                await repo.post(tx, account, traffic, key="late", at=2)

        async def page(after: int) -> list[wire.LedgerEntry]:
            async with one.reading() as tx:
                return await repo.ledger_page(tx, account.id, after=after, limit=10, filters={})

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(early())
            await first_in.wait()
            second = tasks.create_task(late())
            waiting = (
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
            )

            async def blocked_or_done() -> bool:
                async with one.reading() as tx:
                    return second.done() or bool(await tx.all(waiting))

            await poll(blocked_or_done, "the second writer to wait or to commit", timeout=10)
            seen = await page(0)
            release.set()
        cursor = seen[-1].id if seen else 0
        seen += await page(cursor)
        assert sorted(e.idempotency_key for e in seen) == ["early", "late"]


def test_announcements_slice_many_agents_and_replicas_skip_their_own() -> None:
    """An event for many agents is announced in slices; a hub ignores its own and garbage."""
    one, two = PushHub(), PushHub()
    ids = [f"agt_{n:016x}" for n in range(2 * FAN_OUT_IDS + 1)]
    event = wire.PushEvent(type="changed", agent_ids=ids, reason="freeze")
    payloads = one.announcements(event)
    assert len(payloads) == 3 and all(len(p.encode()) < 8000 for p in payloads)
    heard: list[wire.PushEvent] = []
    one.publish = two.publish = heard.append  # type: ignore[method-assign]
    for payload in [*payloads, "not json", '{"origin": "x"}']:
        one.hear(payload)
        two.hear(payload)
    assert [e.agent_ids for e in heard] == [ids[:100], ids[100:200], ids[200:]]
    assert {(e.type, e.reason) for e in heard} == {("changed", "freeze")}
