"""Prometheus exposition shared by the relay and the billing API: a listener and bounded labels.

Invariants:
- Values are read from the process's own counters at scrape time, by collectors
  registered on a private `CollectorRegistry` per server: a scrape adds nothing
  to the byte path, and two servers in one process never share a metric.
- The listener serves `GET /metrics` only, without a token: it exposes figures,
  no secrets and no control, and listens on loopback unless told otherwise.
- Per-agent labels are bounded: the first `limit` agents seen keep their own
  label for the life of the process; every later one is summed into `other`,
  so a counter stays monotonic under either label.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType

import msgspec
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from quota.contract.config import Address, Problems, decode_value

OTHER = "other"
SHUTDOWN_TIMEOUT_S = 2.0

log = structlog.get_logger()

Refresh = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    """Where `/metrics` listens (`port` None: off) and how many labels it may make."""

    host: str = "127.0.0.1"
    port: int | None = None
    max_agents: int = 100
    per_tunnel: bool = False


def metrics_config(
    listen: str, problems: Problems, *, max_agents: int = 100, per_tunnel: bool = False
) -> MetricsConfig:
    """A `[metrics]` section as a value: `listen` "" is off, else HOST:PORT (a bad one is noted)."""
    address = decode_value(Address, listen, "metrics.listen", problems) if listen else None
    if address is None or address is msgspec.UNSET:
        return MetricsConfig(max_agents=max_agents, per_tunnel=per_tunnel)
    return MetricsConfig(
        host=address.host, port=address.port, max_agents=max_agents, per_tunnel=per_tunnel
    )


class LabelCap:
    """Hands out at most `limit` distinct label values; the rest become `other`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._kept: set[str] = set()

    def label(self, value: str) -> str:
        if value in self._kept:
            return value
        if len(self._kept) < self.limit:
            self._kept.add(value)
            return value
        return OTHER

    def sum_by(self, values: Iterable[tuple[tuple[str, ...], int]]) -> dict[tuple[str, ...], int]:
        """Totals keyed by labels whose first element (the agent) is capped."""
        totals: Counter[tuple[str, ...]] = Counter()
        for labels, value in values:
            totals[(self.label(labels[0]), *labels[1:])] += value
        return dict(totals)


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
