"""The `/metrics` listener shared by the relay and the billing API.

Invariants:
- Values are read from the process's own counters at scrape time, by collectors
  registered on a private `CollectorRegistry` per server: a scrape adds nothing
  to the byte path, and two servers in one process never share a metric.
- The listener serves `GET /metrics` only, without a token: it exposes figures,
  no secrets and no control, and listens on loopback unless told otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from quota.metrics import MetricsConfig

SHUTDOWN_TIMEOUT_S = 2.0

log = structlog.get_logger()

Refresh = Callable[[], Awaitable[None]]


class MetricsServer:
    """`GET /metrics` for `registry` on `host:port`, as an async context manager.

    `refresh` runs before each scrape: it reads what only an `await` can read
    (a queue depth in SQLite) into the state the collectors then report.
    """

    def __init__(
        self, registry: CollectorRegistry, config: MetricsConfig, refresh: Refresh | None = None
    ) -> None:
        self.registry = registry
        self.config = config
        self.refresh = refresh
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> MetricsServer:
        if self.config.port is None:
            return self
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.config.host, self.config.port).start()
        except OSError as exc:
            await runner.cleanup()
            where = f"{self.config.host}:{self.config.port}"
            raise MetricsListenError(f"metrics.listen: cannot listen on {where}: {exc}") from None
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await asyncio.shield(runner.cleanup())

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.refresh is not None:
            try:
                await self.refresh()
            except Exception as exc:  # a stale gauge beats a failed scrape
                log.warning("metrics_refresh_failed", error=str(exc))
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class MetricsListenError(OSError):
    """The metrics listener could not bind its address."""
