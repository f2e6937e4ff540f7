"""Money that cannot leak: the billing API tried as an attacker would, on loopback.

Each test reproduces one attack of issue 9 against a real billing server over a
real SQLite file and checks that it is refused with a 4xx naming the limit (never
a 500), that it changes nothing, and that honest requests keep working.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from quota.billing.clock import ManualClock
from quota.billing.config import config_from_mapping
from quota.billing.errors import ConfigError
from quota.billing.server import BillingServer
from quota.core.billing import catalogue_from_config
from quota.core.money import charge_with_carry, metered_rate, parse_coin
from tests.billing.api import ADMIN, DAY, RELAY, Api, Webhook, make_config

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


async def test_an_unknown_token_is_refused_while_a_write_transaction_is_held(
    api: Api, server: BillingServer
) -> None:
    """Unknown tokens are looked up without the write lock: answered while a writer holds it."""
    acc, token = await api.account()
    async with server.store.transaction():
        for bad in ("no-such-token", "qra_" + "x" * 43):
            status, _ = await asyncio.wait_for(api.call("GET", f"/v1/accounts/{acc}", bad), 10)
            assert status == 401
        status, answer = await asyncio.wait_for(api.call("GET", "/v1/catalogue", token), 10)
        assert status == 200, answer


async def test_repeated_auth_failures_from_one_source_get_429_with_retry_after(
    api: Api, server: BillingServer, clock: ManualClock
) -> None:
    """After the allowed failures a source is answered 429 and Retry-After; admin still works."""
    acc, token = await api.account()
    statuses = []
    for n in range(40):
        async with api.session.get(
            f"{api.url}/v1/accounts/{acc}", headers={"Authorization": f"Bearer bad-{n}"}
        ) as resp:
            statuses.append(resp.status)
            if resp.status == 429:
                retry_after = int(resp.headers["Retry-After"])
                assert "error" in await resp.json()
    assert statuses[0] == 401 and statuses[-1] == 429 and set(statuses) == {401, 429}
    assert 1 <= retry_after <= 60
    status, _ = await api.call("GET", f"/v1/accounts/{acc}", token)
    assert status == 429
    await api.ok("GET", f"/v1/accounts/{acc}", ADMIN)
    clock.advance(61_000)
    await api.ok("GET", f"/v1/accounts/{acc}", token)


async def test_a_deposit_that_renews_below_twice_the_price_sends_a_low_balance_notice(
    hooked: tuple[Api, BillingServer, Webhook], clock: ManualClock
) -> None:
    """Lapse, freeze, then a deposit that unfreezes and renews leaving < 2x price: noticed."""
    api, _srv, hook = hooked
    acc, _token, _agent_id = await _agent(api, 19, "pro")
    clock.advance(31 * DAY)
    assert (await api.ok("POST", "/v1/maintenance"))["lapsed"] == 1
    await api.deposit(acc, 20_000, "revive")
    notices = await hook.wait_for(3)
    kinds = [n["kind"] for n in notices]
    assert kinds == ["account_frozen", "account_unfrozen", "low_balance"], kinds
    assert await api.balance(acc) == 1_000


@pytest.mark.parametrize("value", ["9" * 5000, "\u0661\u0662", "\u00b2", "\uff11\uff10", "1 "])
async def test_query_numbers_are_ascii_digits_of_bounded_length(
    api: Api, server: BillingServer, value: str
) -> None:
    """A 5000-digit, Arabic-Indic, superscript or full-width number is a 400, never a 500."""
    acc, token = await api.account()
    for name in ("after", "limit", "since"):
        status, answer = await api.call(
            "GET", f"/v1/accounts/{acc}/ledger", token, params={name: value}
        )
        assert status == 400 and name in answer["error"], answer


async def test_the_store_commits_money_durably(tmp_path: Path) -> None:
    """WAL with synchronous=FULL: a commit survives power loss, not only a crash."""
    async with BillingServer(make_config(tmp_path), maintenance=False) as srv:
        async with srv.store.reading() as tx:
            row = await tx.one("PRAGMA synchronous")
            mode = await tx.one("PRAGMA journal_mode")
        assert row is not None and row[0] == 2  # FULL
        assert mode is not None and mode[0] == "wal"


async def test_a_method_the_path_does_not_take_is_405_with_allow(
    api: Api, server: BillingServer
) -> None:
    """405 names the methods the path takes in an Allow header, as HTTP requires."""
    async with api.session.put(api.url + "/v1/deposits") as resp:
        assert resp.status == 405 and resp.headers["Allow"] == "POST"
        assert "error" in await resp.json()
    async with api.session.delete(api.url + "/v1/agents/x") as resp:
        assert resp.status == 405 and set(resp.headers["Allow"].split(",")) >= {"GET", "PATCH"}


async def test_error_texts_stay_within_the_documented_length(
    api: Api, server: BillingServer
) -> None:
    """An unknown plan name of 8,000 characters is quoted in a 422 no longer than 8192."""
    _acc, token, agent = await _agent(api, 50)
    status, answer = await api.call(
        "POST", f"/v1/agents/{agent}/subscription", token, {"plan": "p" * 8000}
    )
    assert status == 422 and "unknown plan" in answer["error"]
    assert len(answer["error"]) <= 8192


async def test_whole_numbers_written_with_a_fraction_are_integers(
    api: Api, server: BillingServer
) -> None:
    """JSON Schema counts 5000.0 and 5e3 as integers; 0.5 and 1e999999999 stay refused."""
    acc, _ = await api.account()
    for n, amount in enumerate(("5000.0", "5e3")):
        raw = f'{{"account_id": "{acc}", "payment_id": "w{n}", "amount": {amount}}}'
        await api.ok("POST", "/v1/deposits", raw=raw.encode())
    for n, amount in enumerate(("0.5", "1e999999999", "1" + "0" * 40 + ".0")):
        raw = f'{{"account_id": "{acc}", "payment_id": "f{n}", "amount": {amount}}}'
        status, answer = await api.call("POST", "/v1/deposits", raw=raw.encode())
        assert status == 400 and "amount" in answer["error"], answer
    assert await api.balance(acc) == 10_000


async def test_the_auth_failure_limit_and_window_are_configurable(tmp_path: Path) -> None:
    """server.auth_failures and server.auth_window set the 429 policy; bad values name the key."""
    config = make_config(tmp_path, auth_failures=2, auth_window="5s")
    assert (config.auth_failures, config.auth_window_ms) == (2, 5_000)
    assert (make_config(tmp_path).auth_failures, make_config(tmp_path).auth_window_ms) == (
        20,
        60_000,
    )
    for key, bad in (("auth_failures", 0), ("auth_window", "0s"), ("auth_window", "soon")):
        with pytest.raises(ConfigError, match=rf"^server\.{key}"):
            make_config(tmp_path, **{key: bad})
    async with (
        BillingServer(config, maintenance=False) as srv,
        aiohttp.ClientSession() as session,
    ):
        statuses = []
        for n in range(3):
            headers = {"Authorization": f"Bearer nope-{n}"}
            async with session.get(f"{srv.url}/v1/catalogue", headers=headers) as resp:
                statuses.append(resp.status)
                retry_after = resp.headers.get("Retry-After")
        assert statuses == [401, 401, 429] and retry_after is not None
        assert 1 <= int(retry_after) <= 5


async def test_a_ledger_reason_quoting_a_long_payment_id_stays_within_the_document(
    api: Api, server: BillingServer
) -> None:
    """A payment id of 8192 characters is credited; the entry's reason is cut to 8192."""
    acc, _ = await api.account()
    answer = await api.deposit(acc, 1, "p" * 8192)
    assert len(answer["entry"]["reason"]) == 8192 and answer["entry"]["reason"].endswith("...")
