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
import itertools
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any, cast

import asyncssh
import structlog
from asyncssh.connection import SSHServerConnection

from quota.core.bucket import Bucket
from quota.core.sublease import want_size
from relay.config import RelayConfig, load_config
from relay.descriptors import AcceptErrors, descriptor_limit, raise_nofile
from relay.errors import Refused
from relay.hub.billing import BillingLink
from relay.hub.control import Control
from relay.hub.figures import StreamBook
from relay.hub.hub import Hub, interim_loop
from relay.hub.shares import Held
from relay.registry import Agent, Registry
from relay.ssh.front import AgentServer
from relay.ssh.options import front_options, load_host_key
from relay.streamlog.record import StreamRecord
from relay.streamlog.writer import StreamLog
from relay.workers.door import PassedGate
from relay.workers.link import Link
from relay.workers.messages import (
    Agents,
    Dismiss,
    Flush,
    GiveBack,
    Grant,
    LeaseAnswered,
    LeaseRound,
    Login,
    Message,
    Passed,
    PauseStream,
    Ready,
    Recall,
    Records,
    RoundDone,
    SetActive,
    SetLowWater,
    ShareAnswer,
    Usage,
    Want,
)
from relay.workers.reach import RemoteReach
from relay.workers.shares import RelayWideShares

log = structlog.get_logger("relay.worker")

USAGE_EVERY_MS = 100
# A sub-lease's headroom: a stream at loopback line rate (1-2 GB/s) passes 16 MiB in
# about 10 ms, more than the round trip to the supervisor under load; streams that
# still wait double it, up to the ceiling. The supervisor never hands out more than
# its pool, and recalls idle headroom when another worker's streams wait.
SUBLEASE_FLOOR = 16 * 1024 * 1024
SUBLEASE_CEILING = 256 * 1024 * 1024
# A new tunnel's answer waits for the relay's sync round (2 s at most there:
# quota.agent.sync.NEXT_ROUND_MAX_MS, not imported: it brings aiohttp), and no longer
# than this here, whatever the supervisor does.
ROUND_WAIT_S = 3.0


class RecordSink:
    """Stands in for the stream log: records go to the supervisor, batched per loop turn."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self._batch: list[StreamRecord] = []
        self._queued = 0

    @property
    def position(self) -> int:
        """Records queued so far (the worker's stream book notes where a close record is)."""
        return self._queued

    @property
    def durable(self) -> int:
        """All of them: once sent, the supervisor's book settles a stream, not the worker's."""
        return self._queued

    def record(self, rec: StreamRecord) -> None:
        if not self._batch:
            asyncio.get_running_loop().call_soon(self.flush)
        self._batch.append(rec)
        self._queued += 1

    def flush(self) -> None:
        if self._batch:
            batch, self._batch = self._batch, []
            self.link.send(Records(records=batch))


class Feeder:
    """The worker's side of the sub-leases: wants, usage, grants, recalls."""

    def __init__(self, hub: Hub, link: Link, sink: RecordSink) -> None:
        self.hub = hub
        self.link = link
        self.sink = sink
        self.billing = BillingLink(hub)  # the same paths the billing sync takes
        config = hub.config
        self.chunk = max(4 * config.slice_bytes, 2 * config.low_water, SUBLEASE_FLOOR)
        self.chunks: dict[str, int] = {}  # agent -> its chunk now (doubled after each wait)
        self._nudged = False
        self._holders: set[str] = set()  # agents with a tunnel here, as of the last tick
        self._opening: set[str] = set()  # agents opening a tunnel since the last tick
        self._rounds: dict[int, asyncio.Future[None]] = {}  # LeaseRound asks not answered yet
        self._round_ids = itertools.count(1)
        self._check = hub.buckets.check_low_water
        hub.buckets.check_low_water = self.check_low_water  # type: ignore[method-assign]
        self._may_expose = hub.check_may_expose
        hub.check_may_expose = self.check_may_expose  # type: ignore[method-assign]

    def nudge(self, _agent_id: str = "") -> None:
        if not self._nudged:
            self._nudged = True
            asyncio.get_running_loop().call_soon(self.tick)

    def low_mark(self, agent_id: str, bucket: Bucket) -> int:
        """Below this a worker asks for more: its low water, or half a chunk while in use.

        A bucket with a tunnel or a stream here keeps headroom of its own, so a
        datagram (which cannot wait) finds bytes without a round trip to the
        supervisor; the headroom goes back on a recall when another worker waits.
        """
        if agent_id in self._holders or bucket.meters:
            return max(bucket.low_water, self.chunks.get(agent_id, self.chunk) // 2)
        return bucket.low_water

    def check_low_water(self, bucket: Bucket) -> None:
        """The hub's low-water check, plus a nudge when the bucket is below its mark here."""
        self._check(bucket)
        if bucket.short or bucket.remaining < self.low_mark(bucket.agent_id, bucket):
            self.nudge()

    def check_may_expose(self, agent: Agent) -> None:
        """The hub's check before a tunnel opens; then headroom is asked for at once.

        Sent before the agent hears its tunnel is open, so the grant is on its way
        before the first byte or datagram (which cannot wait) arrives.
        """
        self._may_expose(agent)
        self._opening.add(agent.agent_id)  # not in the tunnel table until the check passed
        self.tick()

    async def lease_round(self) -> None:
        """A sync round of the relay, begun now and awaited: `Hub.lease_ready` in a worker.

        A report first, so the supervisor's round sees the new tunnel and primes its
        lease (relay.workers.rounds); the sub-lease arrives before the answer does.
        """
        self.report()
        req = next(self._round_ids)
        done = self._rounds[req] = asyncio.get_running_loop().create_future()
        self.link.send(LeaseRound(req=req))
        try:
            async with asyncio.timeout(ROUND_WAIT_S):  # the supervisor bounds it; so do we
                await done
        except TimeoutError:
            pass
        finally:
            self._rounds.pop(req, None)

    def tick(self) -> None:
        """Report use, then ask for what each bucket below its mark lacks.

        An agent with no tunnel, no stream and no want here (it left this worker)
        asks for nothing, and what it holds goes back to the relay at once: as in one
        process, whose lease goes back when the agent's last tunnel goes, the relay
        can return it to billing at its next round, or hand it to another worker.
        """
        self._nudged = False
        self.report()
        opening, self._opening = self._opening, set()
        self._holders = {t.agent.agent_id for t in self.hub.tunnels.all()} | opening
        for agent_id, bucket in self.hub.buckets.items():
            if bucket.inactive:
                continue
            if agent_id not in self._holders and not bucket.meters and not bucket.short:
                if bucket.remaining:
                    back = bucket.revoke(bucket.remaining)
                    self.link.send(GiveBack(agent_id=agent_id, nbytes=back, used_total=bucket.used))
                continue
            chunk = self.chunks.get(agent_id, self.chunk)
            if bucket.short:  # streams wait on this worker's sub-lease (or on the relay's)
                chunk = self.chunks[agent_id] = min(2 * chunk, SUBLEASE_CEILING)
            n = want_size(
                short=bucket.short,
                remaining=bucket.remaining,
                low_water=self.low_mark(agent_id, bucket),
                chunk=chunk,
            )
            if n:
                self.link.send(Want(agent_id=agent_id, nbytes=n, need=bucket.short))

    def report(self, seq: int = 0) -> None:
        """Usage, and the figures of the streams behind it, taken now; records go first."""
        self.sink.flush()  # a close record reaches the supervisor before the figures it settles
        hub, now = self.hub, self.hub.now_ms()
        admission = hub.gate.admission
        book, figures = hub.book, None
        if book is not None:
            figures = book.snapshot()
            book.written(figures)  # the link delivers in order, or the supervisor is gone
        self.link.send(
            Usage(
                used_total={a: b.used for a, b in hub.buckets.items()},
                tunnel_bytes=[(a, t, n) for (a, t), n in hub.live.usage().items()],
                tunnel_ms=[
                    (a, t, n) for (a, t), n in hub.live.tunnel_time(hub.tunnels.all(), now).items()
                ],
                tunnels=len(hub.tunnels),
                holding=sorted({t.agent.agent_id for t in hub.tunnels.all()}),
                connections={
                    "total": admission.total,
                    "unauthenticated": admission.unauthenticated,
                    "cap": admission.config.ordinary_cap,
                    "descriptor_limit": admission.config.descriptor_limit,
                    "auth_failures": hub.gate.auth_failures,
                },
                refused=dict(hub.gate.refusals) | dict(hub.refusals),
                directions=[(*k, n) for k, n in hub.live.bytes_by_direction().items()],
                pauses={r.value: n for r, n in hub.pauses.items()},
                logged_in=len(hub.connections),
                ssh_refused=dict(hub.refusals),
                seq=seq,
                live=_live(hub) if seq else [],
                run="" if book is None else book.run,
                figures=[] if figures is None else list(figures.rows),
            )
        )

    def handle(self, message: Message) -> None:
        hub = self.hub
        if isinstance(message, Grant):
            agent = hub.registry.get(message.agent_id)
            if agent is None:  # unknown here: give it straight back
                known = hub.buckets.get(message.agent_id)
                used = 0 if known is None else known.used
                nbytes = message.nbytes
                self.link.send(GiveBack(agent_id=message.agent_id, nbytes=nbytes, used_total=used))
                return
            hub.buckets.grant(agent, message.nbytes)
        elif isinstance(message, Recall):
            bucket = hub.buckets.get(message.agent_id)
            back = 0 if bucket is None else bucket.revoke(bucket.remaining)
            used = 0 if bucket is None else bucket.used
            self.link.send(GiveBack(agent_id=message.agent_id, nbytes=back, used_total=used))
        elif isinstance(message, SetActive):
            self.billing.set_status(message.agent_id, message.active)
        elif isinstance(message, Agents):
            self.billing.set_agents(message.agents)
        elif isinstance(message, SetLowWater):
            self.billing.set_low_water(message.agent_id, message.nbytes)
        elif isinstance(message, LeaseAnswered):
            self.billing.lease_answered(message.agent_id, message.exhausted)
        elif isinstance(message, PauseStream):
            stream = hub.live.get(message.stream_id)
            if stream is not None:
                stream.operator_pause(message.paused)
        elif isinstance(message, RoundDone):
            done = self._rounds.get(message.req)
            if done is not None and not done.done():
                done.set_result(None)
        elif isinstance(message, Flush):
            self.sink.flush()
            self.report(message.seq)
        elif isinstance(message, ShareAnswer) and isinstance(hub.shares, RelayWideShares):
            hub.shares.answered(message)


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


def _live(hub: Hub) -> list[dict[str, Any]]:
    return Control(hub).streams()


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
