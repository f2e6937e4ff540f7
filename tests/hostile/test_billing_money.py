"""Money that cannot leak: the billing API tried as an attacker would, on loopback.

Each test reproduces one attack of issue 9 against a real billing server over a
real SQLite file and checks that it is refused with a 4xx naming the limit (never
a 500), that it changes nothing, and that honest requests keep working.
"""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from quota.billing.clock import ManualClock
from quota.billing.config import config_from_mapping
from quota.billing.server import BillingServer
from quota.core.billing import catalogue_from_config
from quota.core.money import charge_with_carry, metered_rate, parse_coin
from tests.billing.api import ADMIN, RELAY, Api
from tests.billing.conftest import api, clock, hooked, server, webhook

# the billing suite's fixtures: a real server on 127.0.0.1, its client, a webhook receiver
__all__ = ["api", "clock", "hooked", "server", "webhook"]

GB = 10**9
MAX = 2**62
EXAMPLE = tomllib.loads(
    (Path(__file__).resolve().parents[2] / "examples" / "billing.toml").read_text()
)


async def _agent(api: Api, coins: int, plan: str | None = None) -> tuple[str, str, str]:
    """An account with `coins` deposited and one client agent, subscribed to `plan` if given."""
    acc, token = await api.account()
    if coins:
        await api.deposit(acc, coins * 1000, f"pay-{acc}")
    agent = await api.agent(acc, token)
    if plan:
        await api.ok("POST", f"/v1/agents/{agent['id']}/subscription", token, {"plan": plan})
    return acc, token, agent["id"]


async def test_a_deposit_past_the_maximum_balance_is_refused_naming_the_limit(
    api: Api, server: BillingServer
) -> None:
    """2**62 then 1 more: 4xx naming the maximum, and later deposits still answer 4xx."""
    acc, _ = await api.account()
    await api.deposit(acc, MAX, "big")
    for n, amount in enumerate((1, MAX, 10**18)):
        body = {"account_id": acc, "payment_id": f"more-{n}", "amount": amount}
        status, answer = await api.call("POST", "/v1/deposits", ADMIN, body)
        assert 400 <= status < 500 and str(MAX) in answer["error"], answer
    assert await api.balance(acc) == MAX


async def test_a_correction_past_the_maximum_is_refused(api: Api, server: BillingServer) -> None:
    """A correction that would take a balance or an agent's traffic past 2**62 is a 4xx."""
    acc, _token, agent = await _agent(api, 1)
    await api.deposit(acc, MAX - 1000, "fill")
    status, answer = await api.call(
        "POST", f"/v1/accounts/{acc}/corrections", ADMIN, {"amount": 1, "reason": "x"}
    )
    assert 400 <= status < 500 and str(MAX) in answer["error"]
    body = {"amount": 0, "reason": "x", "agent_id": agent, "traffic_bytes": MAX}
    await api.ok("POST", f"/v1/accounts/{acc}/corrections", ADMIN, body)
    status, answer = await api.call("POST", f"/v1/accounts/{acc}/corrections", ADMIN, body)
    assert 400 <= status < 500 and str(MAX) in answer["error"]
    assert await api.balance(acc) == MAX


async def test_a_sync_report_with_two_huge_items_is_refused(
    api: Api, server: BillingServer
) -> None:
    """Two items of 2**62 bytes for one agent: 4xx naming the limit; the seq stays free."""
    _acc, _token, agent = await _agent(api, 10, "basic")
    items = [{"agent_id": agent, "bytes": MAX, "tunnel_id": t} for t in ("a", "b")]
    status, answer = await api.call("POST", "/v1/sync", RELAY, {"seq": 1, "items": items})
    assert 400 <= status < 500 and str(MAX) in answer["error"], answer
    one = [{"agent_id": agent, "bytes": MAX, "tunnel_id": "a"}]
    await api.ok("POST", "/v1/sync", RELAY, {"seq": 1, "items": one})
    status, answer = await api.call("POST", "/v1/sync", RELAY, {"seq": 2, "items": one})
    assert 400 <= status < 500 and str(MAX) in answer["error"], answer


@pytest.fixture
async def example_api(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Api]:
    """A billing server selling the example catalogue (starter, pro, 10G and 100G packages)."""
    raw: dict[str, Any] = {
        "server": {"port": 0, "database": str(tmp_path / "b.sqlite3"), "admin_token": ADMIN},
        "pricing": EXAMPLE["pricing"],
        "relays": [{"id": "relay-1", "token": RELAY}],
        "plans": EXAMPLE["plans"],
        "packages": EXAMPLE["packages"],
    }
    config = config_from_mapping(raw, {})
    async with (
        BillingServer(config, clock=clock, maintenance=False) as srv,
        aiohttp.ClientSession() as session,
    ):
        yield Api(session, srv.url)


async def test_plan_flipping_pays_at_least_the_catalogue_price_for_its_traffic(
    example_api: Api, clock: ManualClock
) -> None:
    """starter -> pro, relay 50 GB, back to starter, five times: 250 GB at the lowest price."""
    api = example_api
    acc, token, agent = await _agent(api, 500, "starter")
    before = await api.balance(acc)
    for flip in range(5):
        await api.ok("POST", f"/v1/agents/{agent}/plan", token, {"plan": "pro"})
        await api.usage(flip + 1, [{"agent_id": agent, "bytes": 50 * GB, "tunnel_id": "t"}])
        clock.advance(60_000)
        await api.ok("POST", f"/v1/agents/{agent}/plan", token, {"plan": "starter"})
    spent = before - await api.balance(acc)
    catalogue = catalogue_from_config(EXAMPLE["plans"], EXAMPLE["packages"])
    metered = metered_rate(parse_coin(EXAMPLE["pricing"]["metered_price_per_gb"]))
    lowest = catalogue.lowest_byte_price(metered)  # the 100G package: 0.08 coin/GB
    assert spent >= charge_with_carry(250 * GB, lowest, 0).amount == 20_000, spent


async def test_a_reused_seq_with_another_body_is_409_and_the_same_body_its_first_answer(
    api: Api, server: BillingServer
) -> None:
    """A seq is an idempotency key: replayed it answers the first answer, reused 409."""
    _acc, _token, agent = await _agent(api, 10, "basic")
    body = {"seq": 7, "items": [{"agent_id": agent, "bytes": 10**6}]}
    first = await api.ok("POST", "/v1/sync", RELAY, body)
    again = await api.ok("POST", "/v1/sync", RELAY, body)
    assert again["duplicate"] is True and again["leases"] == first["leases"]
    other = {"seq": 7, "items": [{"agent_id": agent, "bytes": 9 * 10**6}]}
    status, answer = await api.call("POST", "/v1/sync", RELAY, other)
    assert status == 409 and "seq" in answer["error"]
    lease = (await api.ok("POST", "/v1/sync", RELAY, {"seq": 8}))["leases"]
    assert lease == []


async def test_a_failed_idempotent_request_answers_the_same_failure_when_retried(
    api: Api, server: BillingServer
) -> None:
    """A 402 under a key stays a 402 under that key, even once the balance could pay."""
    acc, token, agent = await _agent(api, 0)
    path = f"/v1/agents/{agent}/subscription"
    status, first = await api.call("POST", path, token, {"plan": "pro"}, key="sub-1")
    assert status == 402
    await api.deposit(acc, 50_000, "later")
    status, again = await api.call("POST", path, token, {"plan": "pro"}, key="sub-1")
    assert (status, again) == (402, first)
    status, _ = await api.call("POST", path, token, {"plan": "basic"}, key="sub-1")
    assert status == 409
    await api.ok("POST", path, token, {"plan": "pro"}, key="sub-2")
    assert await api.balance(acc) == 50_000 - 19_000
