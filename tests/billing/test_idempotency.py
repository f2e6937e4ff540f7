"""Retries are safe: each mutation sent twice with the same key changes state once."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from quota.billing.clock import ManualClock
from quota.billing.server import BillingServer
from tests.billing.api import DAY, RELAY, Api, make_config


async def _snapshot(api: Api, acc: str) -> Any:
    account = await api.ok("GET", f"/v1/accounts/{acc}")
    ledger = await api.ok("GET", f"/v1/accounts/{acc}/ledger", params={"limit": "1000"})
    agents = await api.ok("GET", f"/v1/accounts/{acc}/agents")
    accounts = await api.session.get(api.url + "/openapi.json")  # reachable, unchanged
    assert accounts.status == 200
    return account, ledger, agents


async def test_every_mutation_twice_with_one_key_changes_state_once(
    api: Api, server: BillingServer, clock: ManualClock
) -> None:
    """Each mutating endpoint repeated with its idempotency key answers the same, changes once."""
    acc, token = await api.account()
    await api.deposit(acc, 100_000, "seed")
    agent = await api.agent(acc, token, "a")
    other = await api.agent(acc, token, "b")
    a, b = agent["id"], other["id"]
    calls: list[tuple[str, str, str, Any]] = [
        (
            "POST",
            f"/v1/accounts/{acc}/agents",
            token,
            {"name": "c", "role": "client", "public_keys": []},
        ),
        ("POST", f"/v1/accounts/{acc}/deposit-intents", token, {"amount": 5000}),
        ("POST", "/v1/deposits", "admin", {"account_id": acc, "payment_id": "p1", "amount": 7}),
        ("POST", f"/v1/accounts/{acc}/corrections", "admin", {"amount": -3, "reason": "fix"}),
        (
            "PATCH",
            f"/v1/agents/{a}",
            token,
            {
                "allow_metered": True,
                "topup_package": "1G",
                "topup_limit": 2000,
                "topup_below": 10**9,
            },
        ),
        ("POST", f"/v1/agents/{a}/subscription", token, {"plan": "basic"}),
        ("POST", f"/v1/agents/{b}/subscription", token, {"plan": "payg"}),
        ("POST", f"/v1/agents/{a}/plan", token, {"plan": "pro"}),
        ("POST", f"/v1/agents/{a}/packages", token, {"package": "10G"}),
        ("DELETE", f"/v1/agents/{a}/keys/{agent['keys'][0]['id']}", token, None),
        (
            "POST",
            "/v1/sync",
            RELAY,
            {
                "seq": 1,
                "items": [
                    {"agent_id": a, "bytes": 15 * 10**9, "tunnel_seconds": 0},
                    {"agent_id": b, "bytes": 0, "tunnel_seconds": 86_400},
                ],
            },
        ),
    ]
    for n, (method, path, who, body) in enumerate(calls):
        tok = "admin-token-0123456789" if who == "admin" else who
        first = await api.ok(method, path, tok, body, key=f"key-{n}")
        before = await _snapshot(api, acc)
        again = await api.ok(method, path, tok, body, key=f"key-{n}")
        assert await _snapshot(api, acc) == before, path
        if path == "/v1/sync":
            assert again == {**first, "duplicate": True}
        else:
            assert again == first, path
    clock.advance(31 * DAY)
    assert (await api.ok("POST", "/v1/maintenance"))["renewed"] == 1
    before = await _snapshot(api, acc)
    assert (await api.ok("POST", "/v1/maintenance"))["renewed"] == 0
    assert await _snapshot(api, acc) == before


async def test_create_account_twice_with_one_key_creates_one(
    api: Api, server: BillingServer
) -> None:
    """Account creation replayed with its key answers the same account and token."""
    first = await api.ok("POST", "/v1/accounts", body={"name": "x"}, key="acct")
    assert await api.ok("POST", "/v1/accounts", body={"name": "x"}, key="acct") == first
    assert (await api.ok("GET", f"/v1/accounts/{first['account']['id']}", first["token"]))[
        "name"
    ] == "x"


async def test_same_key_with_another_request_is_refused(api: Api, server: BillingServer) -> None:
    """Reusing an idempotency key for a different request is 409 and changes nothing."""
    acc, token = await api.account()
    await api.ok(
        "POST",
        f"/v1/accounts/{acc}/agents",
        token,
        {"name": "x", "role": "support", "public_keys": []},
        key="same",
    )
    status, body = await api.call(
        "POST",
        f"/v1/accounts/{acc}/agents",
        token,
        {"name": "y", "role": "support", "public_keys": []},
        key="same",
    )
    assert status == 409 and "idempotency key" in body["error"]
    assert [a["name"] for a in (await api.ok("GET", f"/v1/accounts/{acc}/agents"))["agents"]] == [
        "x"
    ]


async def test_payment_id_credits_once_and_refuses_another_amount(
    api: Api, server: BillingServer
) -> None:
    """A payment id is credited once; again answers the first result; another amount is 409."""
    acc, _ = await api.account()
    first = await api.deposit(acc, 50_000, "pay-1")
    assert await api.deposit(acc, 50_000, "pay-1") == first
    status, body = await api.call(
        "POST", "/v1/deposits", body={"account_id": acc, "payment_id": "pay-1", "amount": 50_001}
    )
    assert status == 409 and "pay-1" in body["error"]
    assert await api.balance(acc) == 50_000


async def test_underpayment_is_held_for_review_and_overpayment_credited_in_full(
    api: Api, server: BillingServer
) -> None:
    """Below the intent's amount nothing is credited (review); above it, all of it is."""
    acc, token = await api.account()
    intent = await api.ok("POST", f"/v1/accounts/{acc}/deposit-intents", token, {"amount": 20_000})
    low = await api.ok(
        "POST",
        "/v1/deposits",
        body={"account_id": acc, "payment_id": "u", "amount": 19_999, "intent_id": intent["id"]},
    )
    assert (low["status"], low["entry"], low["account"]["balance"]) == ("review", None, 0)
    high = await api.ok(
        "POST",
        "/v1/deposits",
        body={"account_id": acc, "payment_id": "o", "amount": 25_000, "intent_id": intent["id"]},
    )
    assert (high["status"], high["account"]["balance"]) == ("credited", 25_000)


async def test_fifty_concurrent_deposits_and_charges_lose_nothing(
    api: Api, server: BillingServer
) -> None:
    """50 deposits and package purchases at once: balance = ledger sum = deposits - charges."""
    acc, token = await api.account()
    agent = await api.agent(acc, token)
    await api.deposit(acc, 10_000, "start")

    async def deposit(n: int) -> int:
        await api.deposit(acc, 1_000 + n, f"c-{n}")
        return 1_000 + n

    async def charge(n: int) -> int:
        status, _ = await api.call(
            "POST", f"/v1/agents/{agent['id']}/packages", token, {"package": "1G"}, key=f"buy-{n}"
        )
        assert status in (200, 402)
        return -500 if status == 200 else 0

    results = await asyncio.gather(*(deposit(n) if n % 2 else charge(n) for n in range(50)))
    balance = await api.balance(acc)
    ledger = await api.ok("GET", f"/v1/accounts/{acc}/ledger", params={"limit": "1000"})
    assert balance == sum(e["amount"] for e in ledger["entries"]) == 10_000 + sum(results)


async def test_two_replicas_on_one_database_lose_nothing(
    tmp_path: Any, clock: ManualClock, database: str
) -> None:
    """Two services on one database (two connections or pools) racing: every change lands once."""
    config = make_config(tmp_path, database=database)
    async with (
        BillingServer(config, clock=clock, maintenance=False) as one,
        BillingServer(config, clock=clock, maintenance=False) as two,
        aiohttp.ClientSession() as session,
    ):
        api1, api2 = Api(session, one.url), Api(session, two.url)
        acc, token = await api1.account()
        agent = await api2.agent(acc, token)
        await api1.deposit(acc, 100_000, "start")
        jobs = []
        for n in range(25):
            jobs.append(api1.deposit(acc, 10 + n, f"r1-{n}"))
            jobs.append(
                api2.ok(
                    "POST",
                    f"/v1/agents/{agent['id']}/packages",
                    token,
                    {"package": "1G"},
                    key=f"r2-{n}",
                )
            )
        await asyncio.gather(*jobs)
        expected = 100_000 + sum(10 + n for n in range(25)) - 25 * 500
        assert await api2.balance(acc) == expected
