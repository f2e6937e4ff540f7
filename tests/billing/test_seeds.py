"""The worked examples of the product documents (/work/shared/seeds/), end to end."""

from __future__ import annotations

from typing import Any

from quota.billing.clock import ManualClock
from quota.billing.server import BillingServer
from tests.billing.api import DAY, Api, Webhook


async def _kinds(api: Api, account_id: str) -> list[tuple[str, int, int]]:
    page = await api.ok("GET", f"/v1/accounts/{account_id}/ledger")
    return [(e["kind"], e["amount"], e["balance_after"]) for e in page["entries"]]


async def test_deposit_50_plan_19_freeze_and_unfreeze(
    hooked: tuple[Api, BillingServer, Webhook], clock: ManualClock
) -> None:
    """50 in, 19 every 30 days: 31, 12 (low balance), frozen at 12, deposit 50: 62, renewed."""
    api, _srv, hook = hooked
    acc, token = await api.account()
    await api.deposit(acc, 50_000, "pay-1")
    agent = await api.agent(acc, token)
    result = await api.ok("POST", f"/v1/agents/{agent['id']}/subscription", token, {"plan": "pro"})
    assert result["account"]["balance"] == 31_000
    assert result["agent"]["status"] == "active"

    clock.advance(30 * DAY)
    assert (await api.ok("POST", "/v1/maintenance"))["renewed"] == 1
    assert await api.balance(acc) == 12_000
    notices = await hook.wait_for(1)
    assert [(n["kind"], n["balance"], n["threshold"]) for n in notices] == [
        ("low_balance", 12_000, 38_000)
    ]

    clock.advance(30 * DAY)
    assert (await api.ok("POST", "/v1/maintenance"))["frozen_accounts"] == [acc]
    account = await api.ok("GET", f"/v1/accounts/{acc}", token)
    assert (account["balance"], account["frozen"]) == (12_000, True)
    agent_now = await api.ok("GET", f"/v1/agents/{agent['id']}", token)
    assert agent_now["status"] == "inactive"
    assert [n["kind"] for n in await hook.wait_for(2)] == ["low_balance", "account_frozen"]

    deposit: Any = await api.deposit(acc, 50_000, "pay-2")
    assert deposit["entry"]["balance_after"] == 62_000
    assert deposit["account"]["frozen"] is False
    assert deposit["renewed"] == [agent["id"]]
    assert (await api.ok("GET", f"/v1/agents/{agent['id']}", token))["status"] == "active"
    assert await _kinds(api, acc) == [
        ("deposit", 50_000, 50_000),
        ("subscription", -19_000, 31_000),
        ("renewal", -19_000, 12_000),
        ("expiry", 0, 12_000),
        ("deposit", 50_000, 62_000),
        ("renewal", -19_000, 43_000),
    ]


async def test_two_payg_tunnels_for_15_days_cost_one_monthly_price(
    api: Api, server: BillingServer
) -> None:
    """Two pay-as-you-go tunnels active 15 days cost exactly one monthly price (2.100)."""
    acc, token = await api.account()
    await api.deposit(acc, 10_000, "p")
    agent = await api.agent(acc, token)
    await api.ok("POST", f"/v1/agents/{agent['id']}/subscription", token, {"plan": "payg"})
    daily = []
    for day in range(15):
        before = await api.balance(acc)
        # two tunnels, reported in uneven slices over the day
        for seq, seconds in enumerate((1, 3599, 40_000, 42_800) * 2):
            items = [{"agent_id": agent["id"], "tunnel_seconds": seconds}]
            await api.usage(day * 100 + seq, items)
        daily.append(before - await api.balance(acc))
    assert await api.balance(acc) == 10_000 - 2_100
    assert set(daily) == {140}


async def test_one_payg_tunnel_for_30_days_costs_exactly_the_monthly_price(
    api: Api, server: BillingServer
) -> None:
    """One tunnel for 30 days in odd-sized reports costs exactly 2.100, each day 0.070."""
    acc, token = await api.account()
    await api.deposit(acc, 5_000, "p")
    agent = await api.agent(acc, token)
    await api.ok("POST", f"/v1/agents/{agent['id']}/subscription", token, {"plan": "payg"})
    seq, left = 0, 30 * 86_400
    for chunk in (7, 86_393, 1, 100_000) * 100:
        step = min(chunk, left)
        if step:
            seq += 1
            await api.usage(seq, [{"agent_id": agent["id"], "tunnel_seconds": step}])
            left -= step
    assert left == 0
    assert await api.balance(acc) == 5_000 - 2_100


async def test_one_gb_metered_costs_exactly_100_millicoin(api: Api, server: BillingServer) -> None:
    """1 GB beyond bucket and packages at 0.1 coin/GB costs 100 millicoin, also as 1000 x 1 MB."""
    acc, token = await api.account()
    await api.deposit(acc, 10_000, "p")
    big = await api.agent(acc, token, "big")
    small = await api.agent(acc, token, "small")
    for agent in (big, small):
        await api.ok("POST", f"/v1/agents/{agent['id']}/subscription", token, {"plan": "payg"})
        await api.ok("PATCH", f"/v1/agents/{agent['id']}", token, {"allow_metered": True})
    await api.usage(1, [{"agent_id": big["id"], "bytes": 10**9}])
    assert await api.balance(acc) == 9_900
    for n in range(1000):
        await api.usage(10 + n, [{"agent_id": small["id"], "bytes": 10**6}])
    assert await api.balance(acc) == 9_800
    page = await api.ok(
        "GET",
        f"/v1/accounts/{acc}/ledger",
        token,
        params={"kind": "metered_traffic", "agent_id": small["id"], "limit": "1000"},
    )
    assert len(page["entries"]) == 1000
    assert sum(e["amount"] for e in page["entries"]) == -100
    assert sum(e["used_bytes"] for e in page["entries"]) == 10**9
