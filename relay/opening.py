"""What a relay opens at start, in one process or as the workers' supervisor alike.

- `open_books`: the quota agent's journal (with billing) and the stream log; the
  stream log starts from the figures the journal holds of a killed run's streams,
  which the journal then forgets (the stream log holds them now).
- `open_quota_agent`: the billing client and the one quota agent of the relay,
  hooked to its host before its leases and agent cache are restored.
- `metrics_server`: `/metrics` on `metrics.listen`, or nothing listening when off.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

from quota.agent.client import BillingClient
from quota.agent.journal import Journal
from quota.agent.sync import QuotaAgent, QuotaHost, StreamFigureSource, SyncSettings
from quota.metrics_server import MetricsListenError, MetricsServer
from relay.admin.metrics import RelayCollector, relay_registry
from relay.config import BillingLinkConfig, RelayConfig
from relay.errors import ConfigError
from relay.hub.hub import Hub
from relay.streamlog.writer import StreamLog


async def open_books(
    stack: AsyncExitStack, config: RelayConfig
) -> tuple[Journal | None, StreamLog]:
    """The journal (None without billing) and the stream log, closed by `stack`."""
    journal, journaled = None, None
    if config.billing is not None:
        journal = await stack.enter_async_context(Journal(config.billing.journal))
        journaled = await journal.journaled_streams()
    streamlog = await stack.enter_async_context(
        StreamLog(
            config.stream_log_path,
            relay_id=config.relay_id,
            flush_ms=config.flush_ms,
            json_lines=config.json_lines,
            journaled=journaled,  # a killed run's streams get the figures billing is told
        )
    )
    if journal is not None:
        await journal.forget_streams()  # the stream log holds them now
    return journal, streamlog


async def open_quota_agent(
    stack: AsyncExitStack,
    link: BillingLinkConfig,
    host: QuotaHost,
    journal: Journal,
    *,
    low_water: int,
    hook: Callable[[QuotaAgent], None],
    figures: StreamFigureSource | None = None,
) -> QuotaAgent:
    """Open the billing client, `hook` the agent to its host, restore leases and the agent cache."""
    client = await stack.enter_async_context(
        BillingClient(link.urls, link.token, timeout_s=link.timeout_ms / 1000)
    )
    settings = SyncSettings(
        interval_ms=link.interval_ms,
        min_want=link.min_want,
        max_want=link.max_want,
        low_water=low_water,
        offline_policy=link.offline,
        offline_allowance=link.offline_allowance,
        idle_return_ms=link.idle_return_ms,
        registry_refresh_ms=link.registry_refresh_ms,
    )
    quota = QuotaAgent(host, journal, client, settings, figures=figures)
    hook(quota)
    await quota.restore()
    return quota


@contextlib.asynccontextmanager
async def metrics_server(
    config: RelayConfig,
    hub: Hub,
    quota: QuotaAgent | None,
    before: Callable[[], Awaitable[None]] | None = None,
    workers: Callable[[], list[int]] | None = None,
) -> AsyncIterator[MetricsServer]:
    """`/metrics` on `metrics.listen`; `before` runs ahead of each scrape's own refresh.

    `workers`: a relay of workers' pids, whose process figures add to this one's.
    """
    collector = RelayCollector(hub, quota, config.metrics)

    async def refresh() -> None:
        if before is not None:
            await before()
        await collector.refresh()

    server = MetricsServer(relay_registry(collector, workers), config.metrics, refresh)
    try:
        async with server:
            yield server
    except MetricsListenError as exc:
        raise ConfigError(str(exc)) from None
