"""The HTTP surface: bad input, tokens, isolation between accounts, freeze, OpenAPI."""

from __future__ import annotations

import json
from typing import Any

import pytest

from quota.billing.clock import ManualClock
from quota.billing.openapi import document
from quota.billing.routes import ROUTES
from quota.billing.server import BillingServer
from quota.contract import wire
from tests.billing.api import ADMIN, DAY, RELAY, Api, check_schema


async def _ledger_len(api: Api, acc: str) -> int:
    page = await api.ok("GET", f"/v1/accounts/{acc}/ledger", params={"limit": "1000"})
    return len(page["entries"])


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"account_id": "A", "payment_id": "p", "amount": 5, "extra": 1}, "'extra'"),
        ({"account_id": "A", "payment_id": "p", "amount": -5}, "amount"),
        ({"account_id": "A", "payment_id": "p", "amount": 1.5}, "amount"),
        ({"account_id": "A", "payment_id": "p", "amount": "5"}, "amount"),
        ({"account_id": "A", "payment_id": "p", "amount": True}, "amount"),
        ({"account_id": "A", "payment_id": "p", "amount": 10**30}, "amount"),
        ({"account_id": "A", "payment_id": "p", "amount": 0}, "amount"),
        ({"account_id": "A", "payment_id": 7, "amount": 5}, "payment_id"),
        ({"account_id": "A", "amount": 5}, "payment_id"),
        ([1, 2], "body"),
    ],
)
async def test_bad_deposit_bodies_are_4xx_naming_the_field_and_write_nothing(
    api: Api, server: BillingServer, body: Any, named: str
) -> None:
    """Unknown fields, negative, fractional, boolean, huge or missing values: 400, no write."""
    acc, _ = await api.account()
    if isinstance(body, dict) and body.get("account_id") == "A":
        body["account_id"] = acc
    status, answer = await api.call("POST", "/v1/deposits", body=body)
    assert status == 400 and named in answer["error"]
    if named != "amount" or body["amount"] != 0:  # zero: allowed by the schema, refused by rule
        with pytest.raises(AssertionError):
            check_schema(body, {"$ref": "#/components/schemas/DepositRequest"})
    assert await api.balance(acc) == 0 and await _ledger_len(api, acc) == 0


async def test_malformed_json_and_missing_key_are_400(api: Api, server: BillingServer) -> None:
    """Broken JSON, a missing Idempotency-Key and unknown query parameters are refused."""
    acc, token = await api.account()
    for raw in (
        b'{"account_id": ',
        b'{"amount": ' + b"9" * 5000 + b"}",
        b"[" * 100_000,
        b"\xff\xfe",
        b'{"account_id": "a", "payment_id": "p", "amount": 1e400}',
    ):
        status, answer = await api.call("POST", "/v1/deposits", raw=raw)
        assert status == 400, answer
        assert "JSON" in answer["error"] or "amount" in answer["error"]
    async with api.session.post(
        f"{api.url}/v1/accounts/{acc}/agents",
        json={"name": "x", "role": "client", "public_keys": []},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        assert resp.status == 400 and "Idempotency-Key" in (await resp.json())["error"]
    status, answer = await api.call("GET", f"/v1/accounts/{acc}", params={"x": "1"})
    assert status == 400 and "x" in answer["error"]
    status, answer = await api.call("GET", f"/v1/accounts/{acc}/ledger", params={"kind": "bogus"})
    assert status == 400 and "kind" in answer["error"]
    status, answer = await api.call(
        "POST",
        f"/v1/accounts/{acc}/agents",
        token,
        {"name": "x", "role": "boss", "public_keys": []},
    )
    assert status == 400 and "role" in answer["error"]
    assert (await api.ok("GET", f"/v1/accounts/{acc}/agents"))["agents"] == []


async def test_a_valid_body_is_decoded_once_and_whole_numbers_still_pass(
    api: Api, server: BillingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A valid body never reaches json.loads; a count written 1.0 or 2e3 is taken the long way."""
    decoded: list[bytes] = []
    loads = json.loads

    def counted(raw: Any, **kw: Any) -> Any:
        decoded.append(raw)
        return loads(raw, **kw)

    acc, _ = await api.account()
    monkeypatch.setattr(json, "loads", counted)
    await api.ok("POST", "/v1/sync", RELAY, {"seq": 1, "items": [{"agent_id": "x", "bytes": 5}]})
    await api.deposit(acc, 1000, "pay-1")
    assert decoded == []
    raw = b'{"account_id": "%s", "payment_id": "pay-2", "amount": 2e3}' % acc.encode()
    status, answer = await api.call("POST", "/v1/deposits", raw=raw)
    assert status < 300 and answer["entry"]["amount"] == 2000, answer
    assert decoded == [raw]
    status, answer = await api.call("POST", "/v1/sync", RELAY, raw=b'{"seq": 2.0}')
    assert status == 200 and answer["seq"] == 2, answer


async def test_unknown_paths_and_methods_answer_json_errors(
    api: Api, server: BillingServer
) -> None:
    """404 and 405 from the router are JSON errors too."""
    async with api.session.get(api.url + "/v1/nope") as resp:
        assert resp.status == 404 and "error" in await resp.json()
    async with api.session.put(api.url + "/v1/deposits") as resp:
        assert resp.status == 405 and "error" in await resp.json()


async def test_tokens_of_the_wrong_kind_are_refused(api: Api, server: BillingServer) -> None:
    """No token 401, unknown token 401, account/relay token on an admin route 403."""
    acc, token = await api.account()
    async with api.session.get(f"{api.url}/v1/accounts/{acc}") as resp:
        assert resp.status == 401
    for bad in ("not-a-token", "tok\u00e9n"):
        status, _ = await api.call("GET", f"/v1/accounts/{acc}", bad)
        assert status == 401
    for tok in (token, RELAY):
        status, answer = await api.call(
            "POST", "/v1/deposits", tok, {"account_id": acc, "payment_id": "p", "amount": 5}
        )
        assert status == 403 and "admin" in answer["error"]
    wanted = "a relay token may not call POST /v1/deposits; it takes an admin token"
    assert answer["error"] == wanted
    status, _ = await api.call("POST", "/v1/sync", token, {"seq": 1, "items": []})
    assert status == 403
    status, _ = await api.call("GET", f"/v1/accounts/{acc}", RELAY)
    assert status == 403
    assert await api.balance(acc) == 0


async def test_an_account_token_never_reaches_another_account(
    api: Api, server: BillingServer
) -> None:
    """Another account's ids answer 404 (not 403) for reads and writes alike."""
    mine, my_token = await api.account("mine")
    theirs, their_token = await api.account("theirs")
    await api.deposit(theirs, 50_000, "p")
    agent = await api.agent(theirs, their_token)
    probes = [
        ("GET", f"/v1/accounts/{theirs}", None),
        ("GET", f"/v1/accounts/{theirs}/ledger", None),
        ("GET", f"/v1/accounts/{theirs}/agents", None),
        ("GET", f"/v1/agents/{agent['id']}", None),
        (
            "POST",
            f"/v1/accounts/{theirs}/agents",
            {"name": "z", "role": "client", "public_keys": []},
        ),
        ("POST", f"/v1/agents/{agent['id']}/subscription", {"plan": "pro"}),
        ("POST", f"/v1/agents/{agent['id']}/packages", {"package": "1G"}),
        ("PATCH", f"/v1/agents/{agent['id']}", {"auto_renew": False}),
        ("DELETE", f"/v1/agents/{agent['id']}/keys/{agent['keys'][0]['id']}", None),
        ("POST", f"/v1/accounts/{theirs}/deposit-intents", {"amount": 5}),
    ]
    for method, path, body in probes:
        status, _ = await api.call(method, path, my_token, body)
        assert status == 404, (method, path)
    assert await api.balance(theirs) == 50_000
    assert await _ledger_len(api, theirs) == 1
    assert (await api.ok("GET", f"/v1/agents/{agent['id']}"))["keys"][0]["revoked"] is False
    assert (await api.ok("GET", f"/v1/accounts/{mine}", my_token))["id"] == mine


async def test_frozen_account_reads_and_deposits_but_refuses_other_mutations(
    api: Api, server: BillingServer, clock: ManualClock
) -> None:
    """Frozen: reads and deposits work, mutations are 403 with a reason, running agents relay."""
    acc, token = await api.account()
    await api.deposit(acc, 30_000, "p1")
    lapsing = await api.agent(acc, token, "lapsing")
    running = await api.agent(acc, token, "running")
    await api.ok("POST", f"/v1/agents/{lapsing['id']}/subscription", token, {"plan": "pro"})
    clock.advance(20 * DAY)
    await api.ok("POST", f"/v1/agents/{running['id']}/subscription", token, {"plan": "basic"})
    clock.advance(10 * DAY)  # pro ends; 6 coin left cannot pay 19
    assert (await api.ok("POST", "/v1/maintenance"))["frozen_accounts"] == [acc]
    for method, path, body in [
        ("POST", f"/v1/agents/{running['id']}/packages", {"package": "1G"}),
        ("PATCH", f"/v1/agents/{running['id']}", {"allow_metered": True}),
        ("POST", f"/v1/accounts/{acc}/agents", {"name": "n", "role": "client", "public_keys": []}),
        ("POST", f"/v1/agents/{lapsing['id']}/subscription", {"plan": "basic"}),
    ]:
        status, answer = await api.call(method, path, token, body)
        assert status == 403 and "frozen" in answer["error"], path
    grant = (await api.usage(1, [{"agent_id": running["id"], "bytes": 10**6}]))["leases"][0]
    assert grant["status"] == "active" and grant["traffic_remaining"] == 10**9 - 10**6
    assert (await api.ok("GET", f"/v1/agents/{lapsing['id']}", token))["status"] == "inactive"
    await api.ok("POST", f"/v1/accounts/{acc}/deposit-intents", token, {"amount": 5})
    await api.deposit(acc, 10_000, "p2")  # 16 < 19: still frozen
    assert (await api.ok("GET", f"/v1/accounts/{acc}", token))["frozen"] is True
    result = await api.deposit(acc, 3_000, "p3")  # 19 covers the renewal
    assert result["account"]["frozen"] is False and result["account"]["balance"] == 0
    await api.ok("PATCH", f"/v1/agents/{running['id']}", token, {"allow_metered": True})


async def test_openapi_document_matches_the_routes_and_messages(
    api: Api, server: BillingServer
) -> None:
    """/openapi.json lists every route with the schemas of its request and answer messages."""
    async with api.session.get(api.url + "/openapi.json") as resp:
        doc = await resp.json()
    assert doc == document()
    schemas = doc["components"]["schemas"]
    for route in ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        answer = op["responses"][str(route.status)]["content"]["application/json"]["schema"]
        assert answer == {"$ref": f"#/components/schemas/{route.response.__name__}"}
        if route.request is not None:
            ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/" + route.request.__name__)
    deposit = schemas["DepositRequest"]
    assert deposit["additionalProperties"] is False
    assert deposit["required"] == ["account_id", "payment_id", "amount"]
    assert deposit["properties"]["amount"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": wire.MAX_INT,
    }
    assert schemas["LedgerEntry"]["properties"]["kind"]["enum"] == list(wire.KINDS)
    allow = doc["components"]["responses"]["MethodNotAllowed"]["headers"]["Allow"]
    retry = doc["components"]["responses"]["TooManyRequests"]["headers"]["Retry-After"]
    assert allow["required"] and retry["required"]
    for route in ROUTES:
        codes = doc["paths"][route.path][route.method.lower()]["responses"]
        assert {"405", "413", "422", "429"} <= set(codes), route.name


async def test_admin_token_is_refused_nowhere_it_is_listed(api: Api, server: BillingServer) -> None:
    """Every route that lists admin works with the admin token (catalogue as a sample)."""
    catalogue = await api.ok("GET", "/v1/catalogue", ADMIN)
    assert [p["name"] for p in catalogue["plans"]] == ["pro", "basic", "payg"]
    assert catalogue["metered_price_per_gb"] == 100


async def test_a_nul_character_is_refused_alike_on_both_backends(
    api: Api, server: BillingServer
) -> None:
    """A name with a NUL character is a 400 naming the field on SQLite and PostgreSQL; never 500."""
    status, answer = await api.call("POST", "/v1/accounts", body={"name": "a\x00b"})
    assert status == 400 and answer["error"] == "name: holds a NUL character", answer
