"""A worker: one of a relay's processes, its SSH front shared with the others (SO_REUSEPORT).

It serves agents as a lone relay does, with these differences:
- Its buckets hold sub-leases from the supervisor's quota host
  (relay.workers.host, quota.core.sublease): it asks for more at low water
  (`want_size`), reports its use every USAGE_EVERY_MS and before each
  give-back, and gives back on a recall what its streams do not hold.
- Its stream-log records go to the supervisor, the relay's one writer, as soon
  as the loop is idle and before each report; it runs no admin API, metrics
  listener or quota agent. With billing, each report carries the figures of
  the streams behind its usage, taken with it (relay.workers.figures).
- A support agent's channel to an endpoint this worker does not hold is asked
  of the others (relay.workers.reach): the bytes cross in a socket pair.
- It stops on SIGTERM or when the supervisor's socket closes: streams close
  with reason `relay_shutdown` and their records are sent before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any, cast

import asyncssh
import structlog
from asyncssh.connection import SSHServerConnection

from relay.config import RelayConfig, load_config
from relay.descriptors import AcceptErrors, descriptor_limit, raise_nofile
from relay.errors import Refused
from relay.hub.figures import StreamBook
from relay.hub.hub import Hub, interim_loop
from relay.hub.shares import Held
from relay.registry import Registry
from relay.ssh.front import AgentServer
from relay.ssh.options import front_options, load_host_key
from relay.streamlog.writer import StreamLog
from relay.workers.door import PassedGate
from relay.workers.feeder import USAGE_EVERY_MS, Feeder, RecordSink
from relay.workers.link import Link
from relay.workers.messages import (
    Dismiss,
    Login,
    Message,
    Passed,
    Ready,
)
from relay.workers.reach import RemoteReach
from relay.workers.shares import RelayWideShares

log = structlog.get_logger("relay.worker")


def share_refused(hub: Hub, held: Held, exc: Refused) -> None:
    """The relay refused a share this worker took at once (a login): end what took it."""
    for server in list(hub.connections):
        if server.held is held:
            server.held = None
            server.login_refused(exc)
    for tunnel in hub.tunnels.all():
        if tunnel.held is held:
            tunnel.held = None
            hub.refuse(tunnel.conn, tunnel.agent, f"-R {tunnel.listen_host}:{tunnel.port}", exc)
            hub.remove_tunnel(tunnel)


async def front_connection_options(config: RelayConfig, hub: Hub, host_key: Any) -> Any:
    """asyncssh's server options for the connections the supervisor passes, built once."""
    return await asyncssh.SSHServerConnectionOptions.construct(
        server_factory=lambda: AgentServer(hub), **front_options(config, host_key)
    )


class PassedFront:
    """The SSH front of a worker: it serves the connections the supervisor admitted and passed."""

    def __init__(self, hub: Hub, options: Any) -> None:
        self.hub = hub
        self.options = options
        self.closing = False

    def on_message(self, message: Message, fd: int | None) -> None:
        gate = self.hub.gate
        assert isinstance(gate, PassedGate)
        if isinstance(message, Passed):
            if fd is not None and not self.closing:
                if message.trusted:
                    gate.trusted.add(message.ticket)
                self.hub.spawn(self._serve(message.ticket, fd), f"ssh-{message.ticket}")
                return
            gate.link.send(Login(ticket=message.ticket, event="closed"))
        elif isinstance(message, Dismiss):
            gate.dismiss(message.ticket, message.reason)
        if fd is not None:
            os.close(fd)

    async def _serve(self, ticket: int, fd: int) -> None:
        loop = asyncio.get_running_loop()

        def connection() -> Any:
            conn = SSHServerConnection(loop, self.options)
            conn.set_extra_info(ticket=ticket)
            return conn

        sock = socket.socket(fileno=fd)
        try:
            await loop.connect_accepted_socket(connection, sock)
        except OSError:
            sock.close()  # gone before it was served: the supervisor's gate forgets it
            assert isinstance(self.hub.gate, PassedGate)
            self.hub.gate.link.send(Login(ticket=ticket, event="closed"))

    def close(self) -> None:
        self.closing = True


async def _read(link: Link, feeder: Feeder, stop: asyncio.Event) -> None:
    try:
        async for message in link.messages():
            feeder.handle(message)
    finally:
        stop.set()  # the supervisor went away: so does this worker


async def _ticks(feeder: Feeder) -> None:
    while True:
        await asyncio.sleep(USAGE_EVERY_MS / 1000)
        feeder.tick()


async def run_worker(
    config_path: Path, index: int, ipc_fd: int, fd_channel: int, ssh_port: int
) -> int:
    config = load_config(config_path)
    raise_nofile()
    registry = Registry(None if config.billing else config.agents_file)
    host_key = load_host_key(config.host_key)
    link = await Link.over(socket.socket(fileno=ipc_fd))
    sink = RecordSink(link)
    hub = Hub(config, registry, cast(StreamLog, sink))  # the recorder only calls `record`
    hub.gate = PassedGate(config.gate.admission(descriptor_limit()), link)
    hub.shares = hub.tunnels.shares = shares = RelayWideShares(config.shares, link)
    shares.on_refused = lambda held, exc: share_refused(hub, held, exc)
    hub.serial_tag = f"w{index}."
    if hub.book is not None:  # with billing: its figures ride with each report (Feeder.report)
        hub.book = StreamBook(hub.stream_id(""), hub.live, cast(StreamLog, sink), hub.now_ms)
    feeder = Feeder(hub, link, sink)
    hub.buckets.on_want = feeder.nudge
    if config.billing is not None:  # a new tunnel waits for the lease it primes, as in one process
        hub.lease_round = feeder.lease_round
    reach = RemoteReach(hub, socket.socket(fileno=fd_channel))
    reach.start()
    hub.remote = reach
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    AcceptErrors(loop).install()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the supervisor decides
    front = PassedFront(hub, await front_connection_options(config, hub, host_key))
    reach.on_other = front.on_message
    link.send(Ready(worker=index, pid=os.getpid()))
    tasks = [
        asyncio.create_task(_read(link, feeder, stop), name="worker-link"),
        asyncio.create_task(_ticks(feeder), name="worker-usage"),
        asyncio.create_task(interim_loop(hub, config.interim_ms), name="stream-interim"),
        asyncio.create_task(hub.gate.run(), name="gate"),
    ]
    log.info("worker_ready", worker=index, pid=os.getpid(), ssh_port=ssh_port)
    try:
        await stop.wait()
    finally:
        front.close()
        hub.close_all("relay_shutdown")
        await hub.drain_tasks()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        hub.gate.flush(final=True)
        sink.flush()
        feeder.report()
        await link.drain()
        await link.aclose()
        reach.close()
    log.info("worker_stopped", worker=index)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relay.workers.worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--ipc-fd", type=int, required=True)
    parser.add_argument("--fd-channel", type=int, required=True)
    parser.add_argument("--ssh-port", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", default="json")
    args = parser.parse_args(argv)
    from relay.logs import configure
    from relay.loop import run

    configure(args.log_level, args.log_format)
    return run(
        run_worker(Path(args.config), args.index, args.ipc_fd, args.fd_channel, args.ssh_port)
    )


if __name__ == "__main__":
    sys.exit(main())
