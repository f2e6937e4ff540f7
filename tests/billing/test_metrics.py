"""The billing API's `/metrics` listener and its health endpoints."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from quota.billing.app import make_app
from quota.billing.clock import ManualClock
from quota.billing.server import BillingServer
from quota.billing.service import BillingService
from quota.billing.store import Store
from quota.metrics import MetricsConfig
from tests.billing.api import RELAY, Api, make_config
from tests.rigs.metrics import scrape, value


@pytest.fixture
async def served(tmp_path: Path, clock: ManualClock) -> AsyncIterator[tuple[Api, BillingServer]]:
    config = dataclasses.replace(make_config(tmp_path), metrics=MetricsConfig(port=0))
    async with (
        BillingServer(config, clock=clock, maintenance=False) as srv,
        aiohttp.ClientSession() as session,
    ):
        yield Api(session, srv.url), srv


async def test_requests_sync_and_ledger_are_counted(served: tuple[Api, BillingServer]) -> None:
    """Latency per route template, sync reports and agent deltas, ledger entries by kind."""
    api, server = served
    acc, token = await api.account()
    await api.deposit(acc, 5000, "pay-1")
    agent = await api.agent(acc, token)
    items = [{"agent_id": agent["id"], "bytes": 10, "tunnel_id": "t"}] * 3
    body = {"seq": 1, "items": items, "leases": []}
    for _ in range(2):  # the second is a duplicate: counted apart, its deltas not again
        await api.ok("POST", "/v1/sync", RELAY, body)
    assert server.metrics_port is not None
    samples = await scrape(server.metrics_port)
    route = "/v1/accounts/{account_id}"
    count = "quotarelay_billing_request_seconds_count"
    assert value(samples, count, route="/v1/sync", method="POST", status="2xx") == 2
    assert value(samples, count, route=route + "/agents", method="POST", status="2xx") == 1
    ingested = "quotarelay_billing_sync_ingested_total"
    assert value(samples, ingested, what="reports") == 1
    assert value(samples, ingested, what="duplicate_reports") == 1
    assert value(samples, ingested, what="agent_deltas") == 3
    assert value(samples, "quotarelay_billing_ledger_entries_total", kind="deposit") == 1
    assert value(samples, "quotarelay_billing_webhooks_pending") == 0


async def test_unmatched_paths_share_one_label(served: tuple[Api, BillingServer]) -> None:
    """Requests to paths no route knows are counted under `unmatched`, not their path."""
    api, server = served
    for path in ("/nope/1", "/nope/2"):
        status, _ = await api.call("GET", path)
        assert status == 404
    assert server.metrics_port is not None
    samples = await scrape(server.metrics_port)
    count = "quotarelay_billing_request_seconds_count"
    assert value(samples, count, route="unmatched", method="GET", status="4xx") == 2


async def test_health_and_readiness_need_no_token(served: tuple[Api, BillingServer]) -> None:
    """`/healthz` and `/readyz` answer 200 without a token while the database answers."""
    _, server = served
    async with aiohttp.ClientSession() as session:
        for path, status in (("/healthz", "alive"), ("/readyz", "ready")):
            async with session.get(server.url + path) as resp:
                assert (resp.status, (await resp.json())["status"]) == (200, status)


async def test_readyz_is_503_with_reasons_when_the_database_is_closed(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A billing API whose database is not open answers `/readyz` 503 naming the database."""
    from aiohttp.test_utils import TestClient, TestServer

    config = make_config(tmp_path)
    service = BillingService(Store(tmp_path / "never-opened.sqlite3"), config, clock)
    async with TestClient(TestServer(make_app(service), host="127.0.0.1")) as client:
        resp = await client.get("/readyz")
        body = await resp.json()
        assert resp.status == 503 and body["status"] == "not ready"
        assert body["reasons"] and "database" in body["reasons"][0]
        assert (await client.get("/healthz")).status == 200


def test_metrics_listen_is_validated() -> None:
    """`metrics.listen` takes HOST:PORT or ""; anything else is an error naming the key."""
    from quota.billing.config import config_from_mapping
    from quota.billing.errors import ConfigError

    base = {"server": {"admin_token": "x" * 16}}
    assert config_from_mapping(base, {}).metrics.port is None
    on = config_from_mapping({**base, "metrics": {"listen": "127.0.0.1:9482"}}, {})
    assert (on.metrics.host, on.metrics.port) == ("127.0.0.1", 9482)
    with pytest.raises(ConfigError, match=r"^metrics\.listen"):
        config_from_mapping({**base, "metrics": {"listen": "nowhere"}}, {})
