"""Run a relay: SSH front, admin API, stream log, until SIGTERM or SIGINT.

Invariants: nothing starts while a secret is exposed or a token unfit
(`relay.startup`). The open-files limit is raised to the hard limit before
anything opens (relay.descriptors), and the gate's task enforces login grace
for as long as the relay listens. SIGTERM stops accepting, closes live streams with reason
`relay_shutdown`, flushes the stream log and returns 0. The host key is made on
first start (ed25519, mode 0600) and kept. A line `{"event": "relay_ready", ...}`
on stdout says the relay listens, with the ports it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncssh
import structlog

from quota.agent.client import BillingClient
from quota.agent.journal import Journal
from quota.agent.sync import QuotaAgent, SyncSettings
from quota.metrics import MetricsListenError, MetricsServer
from quota.private_files import create_private, private_folder
from relay.admin.health import RelayHealth
from relay.admin.metrics import RelayCollector, relay_registry
from relay.admin.server import AdminServer
from relay.config import BillingLinkConfig, RelayConfig
from relay.descriptors import LISTEN_BACKLOG, AcceptErrors, raise_nofile
from relay.errors import ConfigError
from relay.hub.billing import BillingLink
from relay.hub.control import Control
from relay.hub.hub import Hub
from relay.ready import announce
from relay.registry import Registry
from relay.ssh.front import AgentServer
from relay.startup import check_secrets
from relay.streamlog.writer import StreamLog
from relay.workers.supervisor import serve_workers

log = structlog.get_logger("relay")


def load_host_key(path: Path) -> Any:
    """Read the relay's host key, making a new one on first start."""
    if not path.exists():
        try:
            private_folder(path.parent)
            create_private(path, asyncssh.generate_private_key("ssh-ed25519").export_private_key())
        except OSError as exc:
            raise ConfigError(f"relay.host_key: cannot create {path}: {exc.strerror}") from None
        log.info("host_key_created", path=str(path))
    try:
        return asyncssh.read_private_key(str(path))
    except (asyncssh.KeyImportError, OSError) as exc:
        raise ConfigError(f"relay.host_key: cannot read {path}: {exc}") from None


def _login_backstop_s(config: RelayConfig) -> float:
    """asyncssh's own login timeout: a backstop a little after the gate's grace (0: none)."""
    grace = config.gate.login_grace_ms
    return (grace + 5_000) / 1000 if grace else 0


async def _interim(hub: Hub, every_ms: int) -> None:
    while True:
        await asyncio.sleep(every_ms / 1000)
        hub.interim()


async def _quota_agent(
    stack: AsyncExitStack, link: BillingLinkConfig, hub: Hub, journal: Journal
) -> QuotaAgent:
    """Open the billing client, restore leases and the agent cache."""
    client = await stack.enter_async_context(
        BillingClient(link.urls, link.token, timeout_s=link.timeout_ms / 1000)
    )
    settings = SyncSettings(
        interval_ms=link.interval_ms,
        min_want=link.min_want,
        max_want=link.max_want,
        low_water=hub.config.low_water,
        offline_policy=link.offline,
        offline_allowance=link.offline_allowance,
        idle_return_ms=link.idle_return_ms,
        registry_refresh_ms=link.registry_refresh_ms,
    )
    quota = QuotaAgent(BillingLink(hub), journal, client, settings, figures=hub.book)
    hub.buckets.on_want = lambda _agent_id: quota.nudge()
    hub.quota_counters = quota.counters
    await quota.restore()
    return quota


@contextlib.asynccontextmanager
async def _metrics_server(
    config: RelayConfig, hub: Hub, quota: QuotaAgent | None
) -> AsyncIterator[MetricsServer]:
    """`/metrics` on `metrics.listen`, or nothing listening when it is off."""
    collector = RelayCollector(hub, quota, config.metrics)
    server = MetricsServer(relay_registry(collector), config.metrics, collector.refresh)
    try:
        async with server:
            yield server
    except MetricsListenError as exc:
        raise ConfigError(str(exc)) from None


async def open_front(
    config: RelayConfig,
    hub: Hub,
    host_key: Any,
    *,
    port: int | None = None,
    reuse_port: bool = False,
) -> Any:
    """The SSH front on `relay.ssh_listen` (or `port`); workers share it with SO_REUSEPORT."""
    try:
        return await asyncssh.create_server(
            lambda: AgentServer(hub),
            config.ssh_listen.host,
            config.ssh_listen.port if port is None else port,
            server_host_keys=[host_key],
            keepalive_interval=config.keepalive_ms / 1000,
            encryption_algs=list(config.ciphers),
            agent_forwarding=False,
            x11_forwarding=False,
            allow_scp=False,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=LISTEN_BACKLOG,
            login_timeout=_login_backstop_s(config),
        )
    except OSError as exc:
        raise ConfigError(
            f"relay.ssh_listen: cannot listen on {config.ssh_listen}: {exc.strerror}"
        ) from None


async def serve(
    config: RelayConfig,
    on_ready: Callable[[Hub], Awaitable[None]] | None = None,
    *,
    demo: bool = False,
) -> int:
    """Run until SIGTERM/SIGINT; `on_ready` runs once the relay listens. Returns the exit code.

    `demo` is for `quotarelay up` only: it lets the demo tokens pass.
    """
    check_secrets(config, demo=demo)
    log.info(  # names only, never values
        "config_from_env", keys=list(config.env_keys), ignored=list(config.env_ignored)
    )
    if config.workers > 1:
        load_host_key(config.host_key)  # made once, here, before the workers read it
        return await serve_workers(config, on_ready)
    limit = raise_nofile()
    registry = Registry(None if config.billing else config.agents_file)
    host_key = load_host_key(config.host_key)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    AcceptErrors(loop).install()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
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
        hub = Hub(config, registry, streamlog)
        quota = None
        if config.billing is not None and journal is not None:
            quota = await _quota_agent(stack, config.billing, hub, journal)
        server = await open_front(config, hub, host_key)
        offline = config.billing.offline if config.billing else "continue"
        health = RelayHealth(streamlog, quota, offline)
        health.listening = bool(server.sockets)
        admin = await stack.enter_async_context(
            AdminServer(
                Control(hub),
                config.admin_listen,
                config.admin_token,
                health,
                stream_log=config.stream_log_path,
            )
        )
        metrics = await stack.enter_async_context(_metrics_server(config, hub, quota))
        ssh_port = server.sockets[0].getsockname()[1]
        announce(
            config,
            ssh_port=ssh_port,
            admin_port=admin.port,
            metrics_port=metrics.port,
            nofile=limit,
            connection_cap=hub.gate.admission.config.ordinary_cap,
        )
        interim = asyncio.create_task(_interim(hub, config.interim_ms), name="stream-interim")
        gate = asyncio.create_task(hub.gate.run(), name="gate")
        syncing = None if quota is None else asyncio.create_task(quota.run(), name="quota-agent")
        try:
            if on_ready is not None:
                await on_ready(hub)
            await stop.wait()
        finally:
            log.info("relay_stopping")
            interim.cancel()
            gate.cancel()
            server.close()
            hub.close_all("relay_shutdown")
            await hub.drain_tasks()
            await asyncio.gather(interim, gate, return_exceptions=True)
            hub.gate.flush(final=True)
            if syncing is not None and quota is not None:
                syncing.cancel()
                await asyncio.gather(syncing, return_exceptions=True)
                await quota.final_round(timeout_ms=2000)
            await server.wait_closed()
    log.info("relay_stopped")
    sys.stdout.flush()
    return 0
