"""The running billing service: store (with its fan-out), notifier, HTTP site, maintenance loop.

Invariant: everything it starts (the metrics listener too, when `metrics.listen`
is set) it owns and stops on exit, in reverse order:
the maintenance task (in the server's TaskGroup) is cancelled, the HTTP site
closed, the notifier stopped (undelivered notices wait in the outbox for the
next start), and the database closed
last. A failed start undoes whatever had started.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

import structlog
from aiohttp import web

from quota.billing.app import make_app
from quota.billing.clock import Clock, SystemClock
from quota.billing.config import BillingConfig
from quota.billing.errors import ListenError
from quota.billing.maintenance import maintenance_loop
from quota.billing.metrics import BillingMetrics
from quota.billing.notifier import Notifier
from quota.billing.service import BillingService
from quota.billing.store import open_store
from quota.metrics_server import MetricsListenError, MetricsServer

log = structlog.get_logger("quota.billing")


class BillingServer:
    """`async with BillingServer(config) as server:` serves at `server.url`."""

    def __init__(
        self, config: BillingConfig, *, clock: Clock | None = None, maintenance: bool = True
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.maintenance = maintenance
        self.store = open_store(config.database)
        self.notifier = Notifier(
            self.store,
            config.webhook_url,
            config.webhook_secret,
            retries=config.notify_retries,
            timeout_ms=config.notify_timeout_ms,
            backoff_max_ms=config.notify_backoff_max_ms,
        )
        self.service = BillingService(self.store, config, self.clock, self.notifier.submit)
        self.metrics = BillingMetrics(self.service, self.store)
        self.metrics_port: int | None = None  # where /metrics listens, when it does
        self._stack = contextlib.AsyncExitStack()
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    async def __aenter__(self) -> BillingServer:
        log.info(  # names only, never values
            "config_from_env",
            keys=list(self.config.env_keys),
            ignored=list(self.config.env_ignored),
        )
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.store)
            await stack.enter_async_context(self.store.fan_out(self.service.push.hear))
            await stack.enter_async_context(self.notifier)
            app = make_app(self.service, [self.metrics.middleware])
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            await self._listen(runner)
            await self._serve_metrics(stack)
            tasks = await stack.enter_async_context(asyncio.TaskGroup())
            stack.callback(self._stop_maintenance)
            if self.maintenance:
                self._task = tasks.create_task(
                    maintenance_loop(self.service.maintenance, self.config.maintenance_interval_ms),
                    name="billing-maintenance",
                )
            self._stack = stack.pop_all()
        return self

    async def _listen(self, runner: web.AppRunner) -> None:
        site = web.TCPSite(runner, self.config.host, self.config.port)
        try:
            await site.start()
        except OSError as exc:
            raise ListenError(
                f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror}"
            ) from exc
        self.port = runner.addresses[0][1] if runner.addresses else self.config.port

    async def _serve_metrics(self, stack: contextlib.AsyncExitStack) -> None:
        collector = self.metrics.collector
        server = MetricsServer(self.metrics.registry, self.config.metrics, collector.refresh)
        try:
            await stack.enter_async_context(server)
        except MetricsListenError as exc:
            raise ListenError(str(exc)) from exc
        self.metrics_port = server.port

    def _stop_maintenance(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()
