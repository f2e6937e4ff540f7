"""The console tests' parts: a visitor that keeps cookies and reads forms, and the set-up."""

from __future__ import annotations

import contextlib
import html
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from quota.billing.clock import ManualClock
from quota.billing.server import BillingServer
from tests.billing.api import Api, make_config

_INPUT = re.compile(r'<input type="hidden" name="(\w+)" value="([^"]*)">')
_FORM = re.compile(r'<form method="post" action="([^"]+)"[^>]*>(.*?)</form>', re.S)


class Page:
    def __init__(self, status: int, text: str, headers: Any, url: str) -> None:
        self.status, self.text, self.headers, self.url = status, text, headers, url

    def form(self, action: str) -> dict[str, str]:
        """The hidden fields of the form posting to `action`."""
        for found, body in _FORM.findall(self.text):
            if html.unescape(found) == action:
                return {k: html.unescape(v) for k, v in _INPUT.findall(body)}
        raise AssertionError(f"no form posting to {action} in {self.text[:2000]}")


class Visitor:
    """One browser-like client of the console (its own cookie jar)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def close(self) -> None:
        await self.session.close()

    async def get(self, path: str, **params: str) -> Page:
        async with self.session.get(self.url + path, params=params) as resp:
            return Page(resp.status, await resp.text(), resp.headers, str(resp.url))

    async def post(self, path: str, fields: dict[str, str], follow: bool = True) -> Page:
        async with self.session.post(self.url + path, data=fields, allow_redirects=follow) as resp:
            return Page(resp.status, await resp.text(), resp.headers, str(resp.url))

    async def submit(self, page: Page, action: str, **fields: str) -> Page:
        """Post the form of `page` that posts to `action`, with its hidden fields and `fields`."""
        return await self.post(action, {**page.form(action), **fields})

    async def sign_in(self, token: str) -> Page:
        page = await self.get("/console/sign-in")
        return await self.submit(page, "/console/sign-in", token=token)


@dataclass
class Setup:
    server: BillingServer
    api: Api
    clock: ManualClock
    account: str
    token: str
    agent: str  # a client agent on plan "basic"
    support: str  # a support agent

    def visitor(self) -> Visitor:
        return Visitor(self.server.url)


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, database: str) -> AsyncIterator[Setup]:
    """An account with 20 coin, a client agent on plan basic (1G) and a support agent."""
    clock = ManualClock(start_ms=1_796_000_000_000)  # 2026-11-30 00:53:20 UTC
    config = make_config(tmp_path, database=database)
    async with (
        BillingServer(config, clock=clock, maintenance=False) as server,
        aiohttp.ClientSession() as session,
    ):
        api = Api(session, server.url)
        account, token = await api.account("acme")
        await api.deposit(account, 20_000, "pay-1")
        agent = (await api.agent(account, token, "nas"))["id"]
        support = (await api.agent(account, token, "tech", "support"))["id"]
        await api.ok("POST", f"/v1/agents/{agent}/subscription", token, {"plan": "basic"})
        yield Setup(server, api, clock, account, token, agent, support)
