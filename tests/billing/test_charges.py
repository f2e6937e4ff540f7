"""Subscriptions, proration, traffic draw order, auto top-up, catch-up renewals, notices."""

from __future__ import annotations

import asyncio
from typing import Any

from quota.billing.clock import ManualClock
from quota.billing.server import BillingServer
from tests.billing.api import DAY, RELAY, Api, Webhook

GB = 10**9


async def _funded_agent(
    api: Api, amount: int, plan: str | None = None, role: str = "client"
) -> tuple[str, str, str]:
    acc, token = await api.account()
    if amount:
        await api.deposit(acc, amount, "p0")
    agent = await api.agent(acc, token, role=role)
    if plan:
        await api.ok("POST", f"/v1/agents/{agent['id']}/subscription", token, {"plan": plan})
    return acc, token, agent["id"]


async def _metered(api: Api, agent: str, seq: int) -> bool:
    """Whether the agent may draw beyond its traffic: a lease beyond it is granted."""
    ask = {"seq": seq, "leases": [{"agent_id": agent, "want": 10**6}]}
    lease = (await api.ok("POST", "/v1/sync", RELAY, ask))["leases"][0]
    return bool(lease["traffic_remaining"] == 0 and lease["granted_total"] > 0)


async def test_client_needs_a_plan_and_support_needs_none(api: Api, server: BillingServer) -> None:
    """A new client agent is inactive until subscribed; a support agent is active, plan-free."""
    acc, token = await api.account()
    client = await api.agent(acc, token, "c")
    support = await api.agent(acc, token, "s", role="support")
    assert (client["status"], support["status"]) == ("inactive", "active")
    status, answer = await api.call(
        "POST", f"/v1/agents/{support['id']}/subscription", token, {"plan": "pro"}
    )
    assert status == 409 and "support" in answer["error"]
    status, answer = await api.call(
        "POST", f"/v1/agents/{client['id']}/subscription", token, {"plan": "pro"}
    )
    assert status == 402 and "cannot cover" in answer["error"]
    assert (await api.ok("GET", f"/v1/agents/{client['id']}", token))["status"] == "inactive"


async def test_plan_change_credits_unused_days_then_charges_the_new_price(
    api: Api, server: BillingServer, clock: ManualClock
) -> None:
    """Pro 19 for 30 days, after 10 days to basic 5: +12.666 credit, -5, in one transaction."""
    _acc, token, agent = await _funded_agent(api, 20_000, "pro")
    clock.advance(10 * DAY)
    result = await api.ok("POST", f"/v1/agents/{agent}/plan", token, {"plan": "basic"})
    assert [(e["kind"], e["amount"]) for e in result["entries"]] == [
        ("proration_credit", 12_666),
        ("subscription", -5_000),
    ]
    assert result["account"]["balance"] == 1_000 + 12_666 - 5_000
    assert result["agent"]["plan"] == "basic"
    assert result["agent"]["bucket_bytes"] == GB


async def test_plan_change_the_balance_cannot_cover_changes_nothing(
    api: Api, server: BillingServer, clock: ManualClock
) -> None:
    """Basic to pro with too little coin: 402, same plan, same balance, no entries."""
    acc, token, agent = await _funded_agent(api, 6_000, "basic")
    clock.advance(15 * DAY)
    before = await api.ok("GET", f"/v1/accounts/{acc}/ledger")
    status, _answer = await api.call("POST", f"/v1/agents/{agent}/plan", token, {"plan": "pro"})
    assert status == 402
    assert await api.ok("GET", f"/v1/accounts/{acc}/ledger") == before
    assert (await api.ok("GET", f"/v1/agents/{agent}", token))["plan"] == "basic"


async def test_traffic_draws_bucket_then_packages_then_metered(
    api: Api, server: BillingServer, clock: ManualClock
) -> None:
    """1G bucket, 1G package, metered beyond: 3.5G costs exactly 0.150 from the balance."""
    acc, token, agent = await _funded_agent(api, 10_000, "basic")
    await api.ok("POST", f"/v1/agents/{agent}/packages", token, {"package": "1G"})
    grant = (await api.usage(1, [{"agent_id": agent, "bytes": 3_500_000_000}]))["leases"][0]
    assert grant["unbilled_bytes"] == 1_500_000_000 and grant["traffic_remaining"] == 0
    await api.ok("PATCH", f"/v1/agents/{agent}", token, {"allow_metered": True})
    grant = (await api.usage(2, [{"agent_id": agent, "bytes": 1_500_000_000}]))["leases"][0]
    assert grant["unbilled_bytes"] == 0 and await _metered(api, agent, 3)
    assert await api.balance(acc) == 10_000 - 5_000 - 500 - 150
    clock.advance(3_600_000)  # the hour's draws from bucket and packages: one entry at its end
    await server.service.maintenance.run()
    page = await api.ok("GET", f"/v1/accounts/{acc}/ledger", params={"agent_id": agent})
    used = [(e["kind"], e["traffic_bytes"], e["used_bytes"]) for e in page["entries"][-2:]]
    assert used == [("metered_traffic", 0, 1_500_000_000), ("traffic", -2 * GB, 2 * GB)]


async def test_auto_top_up_buys_the_shortfall_within_the_limit_and_never_loops(
    api: Api, server: BillingServer
) -> None:
    """Auto top-up buys the fewest packages for the shortfall, stops at the limit or the balance."""
    acc, token, agent = await _funded_agent(api, 7_000, "basic")  # 2 coin left
    await api.ok(
        "PATCH",
        f"/v1/agents/{agent}",
        token,
        {"topup_package": "1G", "topup_limit": 1_000, "topup_below": 100_000_000},
    )
    await api.usage(1, [{"agent_id": agent, "bytes": 950_000_000}])  # 50M left < 100M: buy 1
    agent_now = await api.ok("GET", f"/v1/agents/{agent}", token)
    assert (agent_now["package_bytes"], agent_now["topup_spent"]) == (GB, 500)
    await api.usage(2, [{"agent_id": agent, "bytes": 2 * GB}])  # wants 3, limit allows 1
    assert (await api.ok("GET", f"/v1/agents/{agent}", token))["topup_spent"] == 1_000
    await api.usage(3, [{"agent_id": agent, "bytes": GB}])  # limit reached: nothing bought
    assert await api.balance(acc) == 1_000
    await api.ok("PATCH", f"/v1/agents/{agent}", token, {"topup_limit": 100_000})
    await api.usage(4, [{"agent_id": agent, "bytes": 3 * GB}])  # needs 4 x 0.5: can pay 2
    blocked = await api.ok("GET", f"/v1/agents/{agent}", token)
    assert await api.balance(acc) == 0
    await api.usage(5, [{"agent_id": agent, "bytes": GB}])  # balance 0: blocked, no retry loop
    assert (await api.ok("GET", f"/v1/agents/{agent}", token))["topup_blocked"] is True
    kinds = [
        e["kind"]
        for e in (await api.ok("GET", f"/v1/accounts/{acc}/ledger", params={"kind": "package"}))[
            "entries"
        ]
    ]
    assert kinds == ["package"] * 3 and blocked["topup_spent"] == 2_000
    await api.deposit(acc, 1_000, "p1")
    assert (await api.ok("GET", f"/v1/agents/{agent}", token))["topup_blocked"] is False


async def test_maintenance_after_days_down_charges_each_missed_period_once_in_order(
    api: Api, server: BillingServer, clock: ManualClock
) -> None:
    """Down for 95 days: three renewals, each once, in period order; running again adds none."""
    acc, token, agent = await _funded_agent(api, 100_000, "pro")
    start = (await api.ok("GET", f"/v1/agents/{agent}", token))["active_until"] - 30 * DAY
    clock.advance(95 * DAY)
    assert (await api.ok("POST", "/v1/maintenance"))["renewed"] == 1
    assert (await api.ok("POST", "/v1/maintenance"))["renewed"] == 0
    renewals = (await api.ok("GET", f"/v1/accounts/{acc}/ledger", params={"kind": "renewal"}))[
        "entries"
    ]
    assert [e["balance_after"] for e in renewals] == [62_000, 43_000, 24_000]
    agent_now = await api.ok("GET", f"/v1/agents/{agent}", token)
    assert agent_now["active_until"] == start + 120 * DAY


async def test_expiry_without_auto_renew_deactivates_without_freezing(
    api: Api, server: BillingServer, clock: ManualClock
) -> None:
    """Auto-renew off: the period ends, the agent turns inactive, the account stays unfrozen."""
    acc, token, agent = await _funded_agent(api, 100_000)
    await api.ok(
        "POST", f"/v1/agents/{agent}/subscription", token, {"plan": "basic", "auto_renew": False}
    )
    clock.advance(30 * DAY)
    assert (await api.ok("POST", "/v1/maintenance"))["expired"] == 1
    assert (await api.ok("GET", f"/v1/agents/{agent}", token))["status"] == "inactive"
    assert (await api.ok("GET", f"/v1/accounts/{acc}", token))["frozen"] is False
    await api.ok("POST", f"/v1/agents/{agent}/subscription", token, {"plan": "basic"})


async def test_low_balance_notice_at_most_once_in_7_days_with_webhook_retries(
    hooked: tuple[Api, BillingServer, Webhook], clock: ManualClock
) -> None:
    """Charges below twice the monthly price notify once a week; a failing webhook is retried."""
    api, _srv, hook = hooked
    hook.fail_first = 2
    _acc, token, agent = await _funded_agent(api, 12_000, "basic")  # 7 < 10: low
    await api.ok("PATCH", f"/v1/agents/{agent}", token, {"allow_metered": True})
    for seq in range(1, 16):
        await api.usage(seq, [{"agent_id": agent, "bytes": 2 * GB}])
        clock.advance(DAY)
    notices: list[dict[str, Any]] = await hook.wait_for(3)
    assert [n["kind"] for n in notices] == ["low_balance"] * 3
    days = [(n["at"] - notices[0]["at"]) // DAY for n in notices]
    assert days == [0, 7, 14] and hook.attempts == 5


async def test_ledger_pages_and_filters(api: Api, server: BillingServer) -> None:
    """Pages follow next_cursor without gaps or repeats; filters by kind, agent and time."""
    acc, token, agent = await _funded_agent(api, 50_000, "basic")
    for n in range(7):
        await api.deposit(acc, 1 + n, f"d{n}")
    seen, after = [], "0"
    while True:
        page = await api.ok(
            "GET", f"/v1/accounts/{acc}/ledger", token, params={"limit": "3", "after": after}
        )
        seen += [e["id"] for e in page["entries"]]
        if page["next_cursor"] is None:
            break
        after = str(page["next_cursor"])
    assert len(seen) == 9 and seen == sorted(set(seen))
    deposits = await api.ok("GET", f"/v1/accounts/{acc}/ledger", token, params={"kind": "deposit"})
    assert len(deposits["entries"]) == 8
    mine = await api.ok("GET", f"/v1/accounts/{acc}/ledger", token, params={"agent_id": agent})
    assert [e["kind"] for e in mine["entries"]] == ["subscription"]
    at = mine["entries"][0]["at"]
    later = await api.ok("GET", f"/v1/accounts/{acc}/ledger", token, params={"since": str(at + 1)})
    assert later["entries"] == []


async def test_the_maintenance_loop_renews_on_its_own(tmp_path: Any, clock: ManualClock) -> None:
    """With a 20 ms interval the server's own loop renews a subscription once its period ends."""
    import aiohttp

    from tests.billing.api import make_config

    config = make_config(tmp_path, maintenance_interval="20ms")
    async with BillingServer(config, clock=clock) as srv, aiohttp.ClientSession() as session:
        api = Api(session, srv.url)
        acc, _token, _agent = await _funded_agent(api, 50_000, "pro")
        clock.advance(30 * DAY)
        deadline = asyncio.get_running_loop().time() + 5
        while await api.balance(acc) != 12_000:
            assert asyncio.get_running_loop().time() < deadline, "no renewal by the loop"
            await asyncio.sleep(0.01)


async def test_payg_agent_stops_when_the_balance_runs_out_and_a_deposit_revives_it(
    api: Api, server: BillingServer
) -> None:
    """Tunnel time beyond the balance drains it to zero, deactivates; a deposit reactivates."""
    acc, token, agent = await _funded_agent(api, 100, "payg")  # 0.100 coin
    grant = (await api.usage(1, [{"agent_id": agent, "tunnel_seconds": 2 * 86_400}]))["leases"]
    assert grant[0]["status"] == "inactive"
    assert await api.balance(acc) == 0
    result = await api.deposit(acc, 1_000, "p1")
    assert result["renewed"] == [agent]
    assert (await api.ok("GET", f"/v1/agents/{agent}", token))["status"] == "active"
    await api.usage(2, [{"agent_id": agent, "tunnel_seconds": 86_400}])
    assert await api.balance(acc) == 930


async def test_usage_for_an_unknown_agent_is_answered_not_refused(
    api: Api, server: BillingServer
) -> None:
    """An unknown agent id in a report gets status unknown; the rest of the report applies."""
    _acc, token, agent = await _funded_agent(api, 10_000, "basic")
    result = await api.usage(
        1, [{"agent_id": "agt_gone", "bytes": 5}, {"agent_id": agent, "bytes": 7}]
    )
    assert [(g["agent_id"], g["status"], g["unbilled_bytes"]) for g in result["leases"]] == [
        ("agt_gone", "unknown", 5),
        (agent, "active", 0),
    ]
    assert (await api.ok("GET", f"/v1/agents/{agent}", token))["bucket_bytes"] == GB - 7


async def test_payg_auto_top_up_limit_counts_per_30_days(
    api: Api, server: BillingServer, clock: ManualClock
) -> None:
    """A pay-as-you-go agent's top-up limit allows one package, again after 30 days."""
    acc, token, agent = await _funded_agent(api, 10_000, "payg")
    await api.ok("PATCH", f"/v1/agents/{agent}", token, {"topup_package": "1G", "topup_limit": 500})
    await api.usage(1, [{"agent_id": agent, "bytes": 2 * GB}])
    await api.usage(2, [{"agent_id": agent, "bytes": GB}])
    assert await api.balance(acc) == 9_500
    clock.advance(30 * DAY)
    await api.usage(3, [{"agent_id": agent, "bytes": GB}])
    assert await api.balance(acc) == 9_000
