"""Fixtures: a billing server (SQLite and PostgreSQL) with an account, and console visitors."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from quota.billing.clock import ManualClock
from quota.billing.server import BillingServer
from tests.billing.api import Api, make_config
from tests.console.client import Setup, Visitor
from tests.rigs.browser import Browser, decide, missing


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


@pytest.fixture
async def setup(tmp_path: Path, database: str) -> AsyncIterator[Setup]:
    """The set-up on SQLite and on PostgreSQL."""
    async with serving(tmp_path, database) as s:
        yield s


@pytest.fixture
async def lone_setup(tmp_path: Path) -> AsyncIterator[Setup]:
    """The set-up on SQLite only (browser tests: the backend is not what they test)."""
    async with serving(tmp_path, str(tmp_path / "billing.sqlite3")) as s:
        yield s


@pytest.fixture
async def visitor(setup: Setup) -> AsyncIterator[Visitor]:
    v = setup.visitor()
    yield v
    await v.close()


@pytest.fixture
async def browser(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Browser]:
    """A headless Chromium; its last page is saved as a screenshot named after the test."""
    action, message = decide(missing(), ci=bool(os.environ.get("CI")))
    if action == "fail":
        pytest.fail(message, pytrace=False)
    if action == "skip":
        pytest.skip(message)
    b = await asyncio.to_thread(Browser, tmp_path / "browser")
    try:
        yield b
    finally:
        await asyncio.to_thread(b.screenshot, request.node.nodeid.split("::", 1)[-1])
        await asyncio.to_thread(b.quit)
