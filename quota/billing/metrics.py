"""The billing API's Prometheus metrics: request latency by route, sync ingestion, ledger, webhooks.

Invariants:
- Request latency is observed once per request by a middleware, labelled by
  the route's path template (never the raw path: the label set is the route
  table's), method and status class; a path no route matches is "unmatched".
- Everything else is read at scrape time from figures billing keeps anyway:
  the relays part's ingestion counters, and the ledger's entry counts by kind
  and the outbox's pending notices (grouped reads per scrape, in `refresh`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from quota.billing import repo
from quota.billing.service import BillingService
from quota.billing.store import Store

P = "quotarelay_billing_"
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BillingCollector(Collector):
    def __init__(self, service: BillingService, store: Store) -> None:
        self.service = service
        self.store = store
        self.ledger_counts: dict[str, int] = {}  # refreshed before each scrape
        self.webhooks_pending = 0

    async def refresh(self) -> None:
        async with self.store.reading() as tx:
            self.ledger_counts = await repo.counts_by_kind(tx)
            self.webhooks_pending = await repo.webhooks.pending_count(tx)

    def collect(self) -> Iterator[Any]:
        ingested = self.service.relays.ingested
        sync = CounterMetricFamily(
            P + "sync_ingested", "relay sync reports and agent deltas taken in", labels=["what"]
        )
        for what in ("reports", "duplicate_reports", "agent_deltas"):
            sync.add_metric([what], ingested[what])
        yield sync
        ledger = CounterMetricFamily(
            P + "ledger_entries", "ledger entries by kind (all accounts)", labels=["kind"]
        )
        for kind, count in sorted(self.ledger_counts.items()):
            ledger.add_metric([kind], count)
        yield ledger
        yield GaugeMetricFamily(
            P + "webhooks_pending",
            "webhook notices waiting in the outbox for delivery",
            value=self.webhooks_pending,
        )
        yield GaugeMetricFamily(
            P + "push_subscribers",
            "relays listening on the push channel",
            value=self.service.push.connected,
        )


class BillingMetrics:
    """The billing API's registry: the collector, request latencies and the process's figures."""

    def __init__(self, service: BillingService, store: Store) -> None:
        self.collector = BillingCollector(service, store)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)
        self.latency = Histogram(
            P + "request_seconds",
            "billing API request latency by route",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )

    @web.middleware
    async def middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = "5xx"
        try:
            response = await handler(request)
            status = f"{response.status // 100}xx"
            return response
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            elapsed = time.perf_counter() - started
            self.latency.labels(route, request.method, status).observe(elapsed)
