"""A real billing API process and a relay synced with it, for end-to-end sync tests."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.harness import ROOT, AgentSpec, Relay, make_agent

ADMIN = "e2e-admin-token-0123456789"
RELAY_TOKEN = "e2e-relay-token-0123456789"
GB = 10**9
_keys = itertools.count(1)

BILLING_TOML = """
[server]
host = "127.0.0.1"
port = {port}
database = "{db}"
admin_token = "{admin}"
maintenance_interval = "1h"

[pricing]
metered_price_per_gb = "0.1"

[[relays]]
id = "relay-1"
token = "{relay}"

[[plans]]
name = "small"
price = "1"
period = "30d"
traffic = "{plan_traffic}"

[[packages]]
name = "pack"
price = "0.5"
traffic = "{package_traffic}"
"""


@dataclass
class Billing:
    """`quotarelay billing serve` as an operator runs it."""

    tmp: Path
    plan_traffic: int = 4_000_000
    package_traffic: int = 4_000_000
    port: int = 0
    proc: asyncio.subprocess.Process | None = None
    url: str = ""
    session: aiohttp.ClientSession | None = field(default=None, repr=False)

    async def start(self) -> Billing:
        config = self.tmp / "billing.toml"
        config.write_text(
            BILLING_TOML.format(
                port=self.port, db=self.tmp / "billing.sqlite3", admin=ADMIN, relay=RELAY_TOKEN,
                plan_traffic=self.plan_traffic, package_traffic=self.package_traffic,
            )
        )  # fmt: skip
        with (self.tmp / "billing.log").open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tools.cli", "billing", "serve", "--config", str(config),
                cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=log,
            )  # fmt: skip
        assert self.proc.stdout is not None
        line = (await asyncio.wait_for(self.proc.stdout.readline(), 30)).decode()
        assert "listening on" in line, (self.tmp / "billing.log").read_text()[-3000:]
        self.url = line.rsplit(" ", 1)[1].strip()
        self.port = int(self.url.rsplit(":", 1)[1])
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        return self

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)
            await asyncio.wait_for(self.proc.wait(), 20)

    async def close(self) -> None:
        await self.stop()
        if self.session is not None:
            await self.session.close()

    async def api(self, method: str, path: str, body: Any = None, token: str = ADMIN) -> Any:
        assert self.session is not None
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": f"k{next(_keys)}"}
        async with self.session.request(method, self.url + path, json=body, headers=headers) as r:
            data = await r.json()
            assert r.status < 300, f"{method} {path}: {r.status} {data}"
            return data

    async def account(self, name: str, deposit_millicoins: int) -> str:
        created = await self.api("POST", "/v1/accounts", {"name": name})
        account_id: str = created["account"]["id"]
        if deposit_millicoins:
            await self.deposit(account_id, deposit_millicoins)
        return account_id

    async def deposit(self, account_id: str, amount: int) -> Any:
        body = {"account_id": account_id, "payment_id": f"pay-{next(_keys)}", "amount": amount}
        return await self.api("POST", "/v1/deposits", body)

    async def agent(self, tmp: Path, account_id: str, name: str, role: str) -> AgentSpec:
        """Register an agent with a fresh key; its spec carries the billing API's id."""
        spec = make_agent(tmp, name, account_id, role)
        got = await self.api(
            "POST",
            f"/v1/accounts/{account_id}/agents",
            {"name": name, "role": role, "public_keys": [spec.public]},
        )
        spec.agent_id = got["id"]
        return spec

    async def usage_total(self, account_id: str, agent_id: str) -> int:
        """Bytes the ledger says this agent used, over every page."""
        total, after = 0, 0
        while True:
            page = await self.api(
                "GET",
                f"/v1/accounts/{account_id}/ledger?agent_id={agent_id}&after={after}&limit=1000",
            )
            total += sum(e["used_bytes"] for e in page["entries"])
            if page["next_cursor"] is None:
                return total
            after = page["next_cursor"]


def synced_relay(tmp: Path, billing: Billing, **billing_keys: Any) -> Relay:
    """A relay whose agents and grants come from `billing`."""
    extra: dict[str, dict[str, Any]] = {
        "billing": {
            "url": billing.url,
            "token": RELAY_TOKEN,
            "interval": "200ms",
            "min_want": "1M",
            "registry_refresh": "2s",
            **billing_keys,
        },
        "quota": {"low_water": "200K", "inactive_grace": "30s"},
    }
    return Relay(tmp, [], extra=extra)


def dumps(x: Any) -> str:
    return json.dumps(x, sort_keys=True)


class SyncProxy:
    """An HTTP proxy between a relay and the billing API that can count, duplicate and replay.

    With `chaos` on, every /v1/sync request is forwarded twice (a duplicate) and,
    after it, one older request is sent again (a replay arriving out of order).
    """

    def __init__(self, target: str, *, chaos: bool = False) -> None:
        self.target = target
        self.chaos = chaos
        self.syncs: list[tuple[float, dict[str, Any]]] = []
        self.port = 0
        self._runner: aiohttp.web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> SyncProxy:
        from aiohttp import web

        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None and self._session is not None
        await self._runner.cleanup()
        await self._session.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _forward(
        self, method: str, path: str, headers: Any, body: bytes
    ) -> tuple[int, bytes]:
        assert self._session is not None
        async with self._session.request(
            method, self.target + path, headers=headers, data=body
        ) as resp:
            return resp.status, await resp.read()

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        if request.path == "/v1/relay/events":  # the push channel is not proxied
            raise web.HTTPNotFound()
        body = await request.read()
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "content-type")
        }
        status, answer = await self._forward(request.method, request.path_qs, headers, body)
        if request.path == "/v1/sync":
            loop = asyncio.get_running_loop()
            self.syncs.append((loop.time(), json.loads(body)))
            if self.chaos:
                await self._forward("POST", "/v1/sync", headers, body)  # a duplicate
                if len(self.syncs) > 1:
                    old = self.syncs[len(self.syncs) // 2][1]
                    await self._forward("POST", "/v1/sync", headers, json.dumps(old).encode())
        return web.Response(status=status, body=answer, content_type="application/json")
