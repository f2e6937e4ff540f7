"""The supervisor of a relay with `relay.workers` > 1: it starts workers, and is their quota host.

Invariants:
- It listens on the SSH port, admits each connection by the relay's one gate
  and passes it to a worker (relay.workers.door): pre-login limits count the
  relay as a whole.
- The one quota host (relay.workers.host), quota agent, journal and billing
  sync, stream-log writer and admin API of the relay live here; the workers
  carry the bytes.
- `relay_ready` is printed once every worker listens.
- A worker that dies while the relay runs is logged (`worker_lost`), its
  streams are closed with reason `worker_lost`, and it is started again; the
  other workers carry on. SIGTERM or SIGINT: every worker is told to stop
  (its streams close with reason `relay_shutdown`), waited for up to
  STOP_GRACE_S, then killed; then the stream log is flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, cast

import msgspec
import structlog

from quota.agent.sync import QuotaAgent
from quota.core.backoff import backoff_ms
from quota.core.errors import InvalidValue
from relay.admin.health import RelayHealth
from relay.admin.server import AdminServer
from relay.config import RelayConfig
from relay.descriptors import raise_nofile
from relay.errors import ConfigError
from relay.hub.gate import Gate
from relay.hub.hub import Hub
from relay.opening import metrics_server, open_books, open_quota_agent
from relay.ready import announce
from relay.registry import Registry
from relay.workers.door import Door
from relay.workers.host import WorkerHost
from relay.workers.link import Link
from relay.workers.messages import IpcError, Login, Message, Reach, Reached, Ready
from relay.workers.prefork import ForkedProcess, Preforked, hold_port
from relay.workers.reach import FdChannel
from relay.workers.view import RelayView

log = structlog.get_logger("relay.workers")

STOP_GRACE_S = 10.0
READY_TIMEOUT_S = 60.0
STABLE_S = 5.0  # a worker that dies sooner after its start is started again after a backoff


class Worker:
    """One worker slot: its process, its link and its incarnation number."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.key = 0
        self.proc: asyncio.subprocess.Process | ForkedProcess | None = None
        self.link: Link | None = None
        self.ready = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None


class Router:
    """Routes reaches between workers: a support agent's worker asks, every other one answers.

    The first "ok" (with its socket) or "refused" answer goes back to the asker; if
    every other worker says "none", so does the supervisor. Descriptors pass
    through, never bytes of a stream.
    """

    def __init__(self) -> None:
        self.channels: dict[int, FdChannel] = {}
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[int, int, set[int]]] = {}  # id -> (asker, its req, left)

    def on_message(self, key: int, message: Message, fd: int | None) -> None:
        try:
            if isinstance(message, Reach):
                self._ask(key, message)
            elif isinstance(message, Reached):
                self._answer(key, message, fd)
        finally:
            if fd is not None:
                os.close(fd)

    def _ask(self, key: int, ask: Reach) -> None:
        others = [k for k in self.channels if k != key]
        if not others:
            self.channels[key].send(Reached(req=ask.req, status="none"))
            return
        rid = next(self._ids)
        self._pending[rid] = (key, ask.req, set(others))
        for other in others:
            self.channels[other].send(msgspec.structs.replace(ask, req=rid))

    def _answer(self, key: int, answer: Reached, fd: int | None) -> None:
        entry = self._pending.get(answer.req)
        if entry is None:
            return
        asker, req, left = entry
        left.discard(key)
        if answer.status == "none" and left:
            return
        del self._pending[answer.req]
        channel = self.channels.get(asker)
        if channel is not None:
            channel.send(msgspec.structs.replace(answer, req=req), fd)

    def lost(self, key: int) -> None:
        channel = self.channels.pop(key, None)
        if channel is not None:
            channel.close()
        for rid, (asker, req, left) in list(self._pending.items()):
            left.discard(key)
            if asker == key:
                del self._pending[rid]
            elif not left:
                del self._pending[rid]
                self.channels[asker].send(Reached(req=req, status="none"))


class Supervisor:
    def ready_workers(self) -> list[tuple[int, FdChannel]]:
        """The workers that listen now, with their descriptor channels (the door's choice)."""
        channels = self.router.channels
        return [
            (s.key, channels[s.key]) for s in self.slots if s.ready.is_set() and s.key in channels
        ]

    def __init__(
        self,
        config: RelayConfig,
        host: WorkerHost,
        ssh_port: int,
        preforked: Preforked | None = None,
    ) -> None:
        if config.source is None:
            raise ConfigError("relay.workers: more than one worker needs a config file")
        self.config = config
        self.source: Path = config.source
        self.host = host
        self.ssh_port = ssh_port
        self.preforked = preforked  # the first workers, forked before the loop began
        self.slots = [Worker(i) for i in range(config.workers)]
        self.stopping = False
        self._keys = itertools.count(1)
        self.restarts = 0
        self.router = Router()
        self.door: Door | None = None

    async def start(self, slot: Worker) -> None:
        slot.key = key = next(self._keys)
        slot.ready = asyncio.Event()
        forked = self.preforked.take(slot.index) if self.preforked is not None else None
        if forked is not None:  # the first start of this slot: forked before the loop began
            parent, fds_parent = forked.link, forked.fds
            slot.proc = ForkedProcess(forked.pid)
        else:
            parent, fds_parent = await self._spawn(slot)
        channel = FdChannel(fds_parent, lambda m, fd: self.router.on_message(key, m, fd))
        channel.start()
        self.router.channels[key] = channel
        slot.link = await Link.over(parent)
        slot.reader = asyncio.create_task(self._read(slot), name=f"worker-{slot.index}-link")
        assert slot.proc is not None
        log.info("worker_started", worker=slot.index, pid=slot.proc.pid, forked=forked is not None)

    async def _spawn(self, slot: Worker) -> tuple[socket.socket, socket.socket]:
        """A new `python -m relay.workers.worker` process for `slot`; the supervisor's ends."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds_parent, fds_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        args = ["--config", str(self.source), "--index", str(slot.index)]
        args += ["--ipc-fd", str(child.fileno()), "--fd-channel", str(fds_child.fileno())]
        args += ["--ssh-port", str(self.ssh_port)]
        try:
            slot.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "relay.workers.worker",
                *args,
                pass_fds=(child.fileno(), fds_child.fileno()),
            )
        finally:
            child.close()
            fds_child.close()
        return parent, fds_parent

    async def _read(self, slot: Worker) -> None:
        link, key = slot.link, slot.key
        assert link is not None
        try:
            async for message in link.messages():
                if isinstance(message, Ready):
                    self.host.joined(key, link, message)
                    slot.ready.set()
                elif isinstance(message, Login):
                    if self.door is not None:
                        self.door.on_login(key, message)
                else:
                    self.host.handle(key, message)
        except (IpcError, InvalidValue) as exc:
            # a worker that breaks the rules is stopped and started again, as if it died
            log.error("worker_protocol_error", worker=slot.index, error=str(exc))
            if slot.proc is not None and slot.proc.returncode is None:
                slot.proc.kill()

    async def wait_ready(self) -> None:
        """Until every worker listens; a worker that exits first fails the start."""

        async def all_ready() -> None:
            for slot in self.slots:
                await slot.ready.wait()

        ready = asyncio.create_task(all_ready())
        dead = [asyncio.create_task(s.proc.wait()) for s in self.slots if s.proc is not None]
        await asyncio.wait([ready, *dead], timeout=READY_TIMEOUT_S, return_when="FIRST_COMPLETED")
        for task in [ready, *dead]:
            task.cancel()
        if not all(s.ready.is_set() for s in self.slots):
            raise ConfigError("relay.workers: a worker did not start (see its log lines)")

    async def watch(self, slot: Worker) -> None:
        """Start `slot` again each time it dies, until the relay stops.

        A worker that dies young (before STABLE_S) is started after a backoff, so
        one that cannot start does not spin; one that ran for a while at once.
        """
        quick_deaths = 0
        while True:
            assert slot.proc is not None
            started = time.monotonic()
            code = await slot.proc.wait()
            if slot.reader is not None:
                await slot.reader  # every record it sent is in before its streams are closed
            closed = self.host.lost(slot.key)
            self.router.lost(slot.key)
            if self.door is not None:
                self.door.lost(slot.key)
            if self.stopping:
                return
            self.restarts += 1
            log.warning("worker_lost", worker=slot.index, exit_code=code, streams_closed=closed)
            quick_deaths = quick_deaths + 1 if time.monotonic() - started < STABLE_S else 0
            if quick_deaths:
                wait = backoff_ms(
                    quick_deaths - 1, first_ms=100, cap_ms=10_000, draw=random.random()
                )
                await asyncio.sleep(wait / 1000)
            await self.start(slot)

    async def stop(self) -> None:
        self.stopping = True
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(signal.SIGTERM)
        for slot in self.slots:
            if slot.proc is None:
                continue
            try:
                await asyncio.wait_for(slot.proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.kill()
                await slot.proc.wait()


def _hook(host: WorkerHost, quota: QuotaAgent) -> None:
    host.quota_counters = quota.counters
    host.on_want = lambda _agent_id: quota.nudge()
    host.rounds.lease_round = quota.next_round


async def serve_workers(
    config: RelayConfig,
    on_ready: Callable[[Any], Awaitable[None]] | None = None,
    preforked: Preforked | None = None,
) -> int:
    """Run the workers until SIGTERM/SIGINT (secrets and the host key are checked by the caller).

    `preforked`: the first workers, forked with the SSH address held before the
    loop began (`relay.workers.prefork`); else they are started as new processes.
    """
    limit = raise_nofile()
    registry = Registry(None if config.billing else config.agents_file)
    held = hold_port(config) if preforked is None else preforked.held
    ssh_port = held.getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        stack.callback(held.close)
        if preforked is not None:
            stack.callback(preforked.close)
        journal, streamlog = await open_books(stack, config)
        host = WorkerHost(config, registry, streamlog)
        quota = None
        if config.billing is not None and journal is not None:
            quota = await open_quota_agent(
                stack,
                config.billing,
                host,
                journal,
                low_water=config.low_water,
                hook=lambda q: _hook(host, q),
                figures=host.book,
            )
        supervisor = Supervisor(config, host, ssh_port, preforked)
        gate = host.gate = Gate(config.gate.admission(limit))
        door = supervisor.door = Door(held, gate, supervisor.ready_workers, host.holds_tunnels)
        offline = config.billing.offline if config.billing else "continue"
        health = RelayHealth(streamlog, quota, offline)
        watchers: list[asyncio.Task[None]] = []
        syncing = None
        gating = asyncio.create_task(gate.run(), name="gate")
        try:
            for slot in supervisor.slots:
                await supervisor.start(slot)
            await supervisor.wait_ready()
            door.start()
            health.listening = True
            admin = await stack.enter_async_context(
                AdminServer(
                    host,
                    config.admin_listen,
                    config.admin_token,
                    health,
                    stream_log=config.stream_log_path,
                    refresh=host.refresh,
                )
            )
            metrics = await stack.enter_async_context(
                metrics_server(
                    config, cast(Hub, RelayView(host)), quota, host.refresh, host.worker_pids
                )
            )
            announce(
                config,
                ssh_port=ssh_port,
                admin_port=admin.port,
                metrics_port=metrics.port,
                line={"workers": config.workers},
                nofile=limit,
                connection_cap=gate.admission.config.ordinary_cap,
            )
            watchers = [
                asyncio.create_task(supervisor.watch(s), name=f"worker-{s.index}")
                for s in supervisor.slots
            ]
            if quota is not None:
                syncing = asyncio.create_task(quota.run(), name="quota-agent")
            if on_ready is not None:
                await on_ready(host)
            await stop.wait()
        finally:
            log.info("relay_stopping")
            door.close()
            await supervisor.stop()
            await asyncio.gather(*watchers, return_exceptions=True)
            await host.rounds.close()
            for slot in supervisor.slots:
                host.lost(slot.key)  # none left after a clean stop
                supervisor.router.lost(slot.key)
                door.lost(slot.key)
            gating.cancel()
            await asyncio.gather(gating, return_exceptions=True)
            gate.flush(final=True)
            if syncing is not None and quota is not None:
                syncing.cancel()
                await asyncio.gather(syncing, return_exceptions=True)
                await quota.final_round(timeout_ms=2000)
    log.info("relay_stopped", pid=os.getpid())
    sys.stdout.flush()
    return 0
