"""Fixtures: a real billing server on 127.0.0.1 over a real database, and a client.

Every server runs once on SQLite and once on PostgreSQL (the `database` fixture).

The client and the webhook receiver live in `tests.billing.api`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from quota.billing.clock import ManualClock
from quota.billing.server import BillingServer
from tests.billing.api import Api, Webhook, make_config


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def server(tmp_path: Path, clock: ManualClock, database: str) -> AsyncIterator[BillingServer]:
    config = make_config(tmp_path, database=database)
    async with BillingServer(config, clock=clock, maintenance=False) as srv:
        yield srv


@pytest.fixture
async def api(server: BillingServer) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, server.url)


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    from aiohttp import web

    hook = Webhook()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    hook.url = f"http://127.0.0.1:{port}/hook"
    yield hook
    await runner.cleanup()


@pytest.fixture
async def hooked(
    tmp_path: Path, clock: ManualClock, webhook: Webhook, database: str
) -> AsyncIterator[tuple[Api, BillingServer, Webhook]]:
    config = make_config(tmp_path, webhook=webhook.url, database=database)
    async with BillingServer(config, clock=clock, maintenance=False) as srv:
        srv.notifier.backoff_first_ms = 10
        async with aiohttp.ClientSession() as session:
            yield Api(session, srv.url), srv, webhook
