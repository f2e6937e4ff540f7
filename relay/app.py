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
import signal
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import asyncssh
import structlog

from quota.agent.sync import QuotaAgent
from relay.admin.health import RelayHealth
from relay.admin.server import AdminServer
from relay.config import RelayConfig
from relay.descriptors import LISTEN_BACKLOG, AcceptErrors, raise_nofile
from relay.errors import ConfigError
from relay.hub.billing import BillingLink
from relay.hub.control import Control
from relay.hub.hub import Hub, interim_loop
from relay.opening import metrics_server, open_books, open_quota_agent
from relay.ready import announce
from relay.registry import Registry
from relay.ssh.front import AgentServer
from relay.ssh.options import front_options, load_host_key
from relay.startup import check_secrets
from relay.workers.supervisor import serve_workers

log = structlog.get_logger("relay")


def _hook(hub: Hub, quota: QuotaAgent) -> None:
    hub.buckets.on_want = lambda _agent_id: quota.nudge()
    hub.lease_round = quota.next_round
    hub.quota_counters = quota.counters


async def open_front(
    config: RelayConfig,
    hub: Hub,
    host_key: Any,
    *,
    port: int | None = None,
    reuse_port: bool = False,
) -> Any:
    """The SSH front on `relay.ssh_listen` (or `port`)."""
    try:
        return await asyncssh.create_server(
            lambda: AgentServer(hub),
            config.ssh_listen.host,
            config.ssh_listen.port if port is None else port,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=LISTEN_BACKLOG,
            **front_options(config, host_key),
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
        journal, streamlog = await open_books(stack, config)
        hub = Hub(config, registry, streamlog)
        quota = None
        if config.billing is not None and journal is not None:
            quota = await open_quota_agent(
                stack,
                config.billing,
                BillingLink(hub),
                journal,
                low_water=config.low_water,
                hook=lambda q: _hook(hub, q),
                figures=hub.book,
            )
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
        metrics = await stack.enter_async_context(metrics_server(config, hub, quota))
        ssh_port = server.sockets[0].getsockname()[1]
        announce(
            config,
            ssh_port=ssh_port,
            admin_port=admin.port,
            metrics_port=metrics.port,
            nofile=limit,
            connection_cap=hub.gate.admission.config.ordinary_cap,
        )
        interim = asyncio.create_task(interim_loop(hub, config.interim_ms), name="stream-interim")
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
