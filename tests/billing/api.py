"""The billing tests' parts: a config, a client that checks every answer, a webhook receiver.

Every answer the client receives is parsed strictly with the wire message its
route declares (errors with `ErrorBody`) and checked against the OpenAPI
document, so any drift between the code and the document fails the test that saw it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web

from quota.billing.config import BillingConfig, config_from_mapping
from quota.billing.openapi import document
from quota.billing.routes import ROUTES
from quota.contract import wire

ADMIN = "admin-token-0123456789"
RELAY = "relay-token-0123456789"
RELAY2 = "relay-token-2-0123456789"
DAY = 86_400_000
WEBHOOK_SECRET = "whsec-test-0123456789abcdef"

CATALOGUE: dict[str, Any] = {
    "plans": [
        {"name": "pro", "price": "19", "period": "30d", "traffic": "10G"},
        {"name": "basic", "price": "5", "period": "30d", "traffic": "1G"},
        {"name": "payg", "kind": "tunnel_time", "price": "2.1"},
    ],
    "packages": [
        {"name": "1G", "price": "0.5", "traffic": "1G"},
        {"name": "10G", "price": "4", "traffic": "10G"},
    ],
}


def make_config(tmp_path: Path, webhook: str | None = None, **server: Any) -> BillingConfig:
    raw: dict[str, Any] = {
        "server": {
            "port": 0,
            "database": str(tmp_path / "billing.sqlite3"),
            "admin_token": ADMIN,
            **server,
        },
        "pricing": {"metered_price_per_gb": "0.1"},
        "notifications": {"retries": 3, "timeout": "2s"},
        "relays": [{"id": "relay-1", "token": RELAY}, {"id": "relay-2", "token": RELAY2}],
        **CATALOGUE,
    }
    if webhook:
        raw["notifications"]["webhook_url"] = webhook
        raw["notifications"]["webhook_secret"] = WEBHOOK_SECRET
    return config_from_mapping(raw, {})


_TYPES = {"integer": int, "string": str, "boolean": bool, "array": list, "object": dict}


def check_schema(value: Any, schema: dict[str, Any], path: str = "$") -> None:
    """Validate `value` against the subset of JSON Schema the OpenAPI document uses."""
    components = document()["components"]["schemas"]
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                check_schema(value, option, path)
                return
            except AssertionError as exc:
                errors.append(str(exc))
        raise AssertionError(f"{path}: matches no option: {errors}")
    kind = schema["type"]
    if kind == "null":
        assert value is None, f"{path}: expected null"
        return
    ok = isinstance(value, _TYPES[kind]) and not (kind == "integer" and isinstance(value, bool))
    assert ok, f"{path}: expected {kind}, got {value!r}"
    if kind == "integer":
        assert schema["minimum"] <= value <= schema["maximum"], f"{path}: out of range"
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in enum"
    if kind == "array":
        for i, item in enumerate(value):
            check_schema(item, schema["items"], f"{path}[{i}]")
    if kind == "object":
        assert set(schema["required"]) <= set(value), f"{path}: missing fields"
        assert set(value) <= set(schema["properties"]), f"{path}: undocumented fields"
        for name, item in value.items():
            check_schema(item, schema["properties"][name], f"{path}.{name}")


def _route_for(method: str, path: str) -> Any:
    for route in ROUTES:
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", route.path) + "$"
        if route.method == method and re.match(pattern, path):
            return route
    return None


class Api:
    """A client that checks every answer against the route's wire message."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url
        self._keys = itertools.count()

    async def call(
        self,
        method: str,
        path: str,
        token: str = ADMIN,
        body: Any = None,
        *,
        key: str | None = None,
        raw: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        route = _route_for(method, path)
        if route is not None and route.keyed:
            headers["Idempotency-Key"] = key or f"k-{next(self._keys)}"
        data: Any = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self.session.request(
            method, self.url + path, data=data, headers=headers, params=params
        ) as resp:
            payload = await resp.json()
            if resp.status < 300:
                assert route is not None and resp.status == route.status
                wire.parse(route.response, payload)
                op = document()["paths"][route.path][route.method.lower()]
                answer = op["responses"][str(route.status)]["content"]["application/json"]
                check_schema(payload, answer["schema"])
                if body is not None and route.request is not None:
                    check_schema(body, op["requestBody"]["content"]["application/json"]["schema"])
            else:
                wire.parse(wire.ErrorBody, payload)
                check_schema(payload, {"$ref": "#/components/schemas/ErrorBody"})
            return resp.status, payload

    async def ok(
        self, method: str, path: str, token: str = ADMIN, body: Any = None, **kw: Any
    ) -> Any:
        status, payload = await self.call(method, path, token, body, **kw)
        assert status < 300, payload
        return payload

    async def account(self, name: str = "acme") -> tuple[str, str]:
        created = await self.ok("POST", "/v1/accounts", body={"name": name})
        return created["account"]["id"], created["token"]

    async def deposit(self, account_id: str, amount: int, payment_id: str) -> Any:
        return await self.ok(
            "POST",
            "/v1/deposits",
            body={"account_id": account_id, "payment_id": payment_id, "amount": amount},
        )

    async def agent(
        self, account_id: str, token: str, name: str = "nas", role: str = "client"
    ) -> Any:
        return await self.ok(
            "POST",
            f"/v1/accounts/{account_id}/agents",
            token,
            {"name": name, "role": role, "public_keys": ["ssh-ed25519 AAAAC3Nza test@host"]},
        )

    async def balance(self, account_id: str) -> int:
        return int((await self.ok("GET", f"/v1/accounts/{account_id}"))["balance"])

    async def usage(self, seq: int, items: list[dict[str, Any]]) -> Any:
        """Report usage as relay-1 does: one /v1/sync report."""
        return await self.ok("POST", "/v1/sync", RELAY, {"seq": seq, "items": items})


class Webhook:
    """A real HTTP receiver for notices; `fail_first` answers 500 that many times."""

    def __init__(self, fail_first: int = 0) -> None:
        self.received: list[dict[str, Any]] = []
        self.attempts = 0
        self.fail_first = fail_first
        self.url = ""

    async def handle(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        self.attempts += 1
        if self.attempts <= self.fail_first:
            return aiohttp.web.Response(status=500)
        self.received.append(await request.json())
        return aiohttp.web.Response(status=204)

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Poll until `count` notices arrived (or fail at the deadline)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.received) < count:
            assert loop.time() < deadline, f"only {len(self.received)} notices: {self.received}"
            await asyncio.sleep(0.01)
        return self.received
