"""The hub: agents' buckets, the tunnel table and live streams of one relay.

It decides nothing about bytes itself (the buckets in quota.core do) and owns no
sockets (the pumps and the SSH front do): it wires them together, answers the
admin API (`RelayControl`) and writes the stream log.

Invariants:
- One bucket per paying agent, created on first use, kept across reconnects.
- A refusal opens nothing, is logged once and its message is shown to the agent.
- Every stream that opens is closed exactly once, and logged open and closed.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import itertools
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import asyncssh
import structlog

from quota.core.bucket import Bucket, BucketState, Meter
from quota.core.stream import PauseReason
from relay.admin.server import UnknownAgent
from relay.config import RelayConfig
from relay.errors import Refused
from relay.hub.tunnels import PUBLIC, Tunnel, TunnelTable
from relay.registry import Agent, Registry
from relay.streamlog.writer import StreamLog, StreamRecord
from relay.tcp.pump import ChannelLeg, Leg, TcpLeg
from relay.tcp.stream import Stream

log = structlog.get_logger("relay")


class Hub:
    def __init__(
        self, config: RelayConfig, registry: Registry, streamlog: StreamLog | None
    ) -> None:
        self.config = config
        self.registry = registry
        self.streamlog = streamlog
        self.buckets: dict[str, Bucket] = {}
        self.tunnels = TunnelTable(config.public_ports)
        self.live: dict[str, Stream] = {}
        self.started_ms = self.now_ms()
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._grace: dict[str, asyncio.TimerHandle] = {}
        self._wanting: set[str] = set()
        self.on_want: Callable[[str], None] | None = None  # the quota agent's nudge
        self.closed_usage: Counter[tuple[str, str]] = Counter()  # (agent, tunnel) -> bytes
        self.closed_time: Counter[tuple[str, str]] = Counter()  # (agent, tunnel) -> ms open
        self.connections: set[Any] = set()  # logged-in agents' SSH front objects
        self.quota_counters: dict[str, int] = {}  # the quota agent's, for the status view

    @staticmethod
    def now_ms() -> int:
        return time.time_ns() // 1_000_000

    # -- buckets ------------------------------------------------------------------

    def bucket_for(self, agent: Agent) -> Bucket:
        bucket = self.buckets.get(agent.agent_id)
        if bucket is None:
            bucket = Bucket(
                agent.agent_id,
                low_water=self.config.low_water,
                slice_bytes=self.config.slice_bytes,
            )
            bucket.inactive = not agent.active
            self.buckets[agent.agent_id] = bucket
        return bucket

    def dispatch(self, wakes: tuple[Meter, ...]) -> None:
        for meter in wakes:
            owner = meter.owner
            assert isinstance(owner, Leg)
            owner.on_wake()

    def check_low_water(self, bucket: Bucket) -> None:
        wants = bucket.wants_grant()
        if wants and bucket.agent_id not in self._wanting:
            self._wanting.add(bucket.agent_id)
            log.info("grant_wanted", agent_id=bucket.agent_id, remaining=bucket.remaining)
            if self.on_want is not None:
                self.on_want(bucket.agent_id)
        elif not wants:
            self._wanting.discard(bucket.agent_id)

    # -- tunnels (called by the SSH front) -----------------------------------------

    def refuse(self, conn: Any, agent: Agent | None, what: str, message: str) -> None:
        log.warning(
            "refused", agent_id=agent.agent_id if agent else None, what=what, reason=message
        )
        if conn is not None:
            conn.send_debug(f"quotarelay: {message}", always_display=True)

    def check_may_expose(self, agent: Agent) -> None:
        if not agent.role.may_expose:
            raise Refused(f"agent {agent.agent_id} is a support agent and cannot register tunnels")
        if self.bucket_for(agent).inactive:
            raise Refused(f"agent {agent.agent_id} is inactive (no active subscription)")

    def add_endpoint(self, agent: Agent, name: str, port: int, conn: Any) -> Tunnel:
        self.check_may_expose(agent)
        tunnel = self.tunnels.add_endpoint(agent, name, port, conn)
        log.info("tunnel_opened", tunnel_id=tunnel.tunnel_id, agent_id=agent.agent_id)
        return tunnel

    async def add_public(self, agent: Agent, listen_host: str, port: int, conn: Any) -> Tunnel:
        self.check_may_expose(agent)
        busy: set[int] = set()  # ports of the range something else holds on this host
        while True:
            chosen = self.tunnels.pick_port(agent, port, avoid=busy)
            tunnel = self.tunnels.add_public(agent, chosen, listen_host, conn)
            try:
                tunnel.server = await asyncio.get_running_loop().create_server(
                    functools.partial(self._public_leg, tunnel),
                    self.config.public_bind,
                    chosen,
                    reuse_address=True,
                )
                break
            except OSError as exc:
                self.tunnels.remove(tunnel)
                if port:  # a port asked for by number: no other will do
                    raise Refused(f"port {chosen} cannot be opened on this relay: {exc}") from None
                busy.add(chosen)
        log.info("tunnel_opened", tunnel_id=tunnel.tunnel_id, agent_id=agent.agent_id, port=chosen)
        return tunnel

    def remove_tunnel(self, tunnel: Tunnel) -> None:
        if self.tunnels.remove(tunnel):
            key = (tunnel.agent.agent_id, tunnel.tunnel_id)
            self.closed_time[key] += self.now_ms() - tunnel.opened_ms
            log.info("tunnel_closed", tunnel_id=tunnel.tunnel_id)
        if tunnel.server is not None:
            tunnel.server.close()

    def resolve(self, agent: Agent, host: str, port: int) -> Tunnel:
        """The endpoint a support agent asks for, or a refusal that reveals nothing."""
        if not agent.role.may_connect:
            raise Refused(f"agent {agent.agent_id} is a client agent and cannot reach endpoints")
        if is_address(host):
            raise Refused(
                f"the relay does not dial {host}:{port}: name an endpoint of your account"
            )
        tunnel = self.tunnels.find_endpoint(agent.account, host.lower(), port)
        if tunnel is None:
            raise Refused(f"no endpoint {host}:{port} in your account")
        if self.bucket_for(tunnel.agent).inactive:
            raise Refused(f"endpoint {host}:{port} belongs to an inactive agent")
        return tunnel

    # -- streams ------------------------------------------------------------------

    def new_stream(self, tunnel: Tunnel, peer_desc: str) -> Stream:
        stream_id = f"{self.config.relay_id}-{self.started_ms:x}-{next(self._ids)}"
        bucket = self.bucket_for(tunnel.agent) if self.config.metering else None
        return Stream(self, stream_id=stream_id, tunnel=tunnel, peer_desc=peer_desc, bucket=bucket)

    async def bridge(self, support: Agent, tunnel: Tunnel, orig: tuple[str, int]) -> ChannelLeg:
        """Open the owner's forwarded-tcpip channel; return the support side's leg."""
        stream = self.new_stream(tunnel, f"support:{support.agent_id}@{orig[0]}:{orig[1]}")
        up, down = ChannelLeg(stream, "up"), ChannelLeg(stream, "down")
        stream.bind(up, down)
        await self._open_owner(stream, down, orig)
        return up

    def _public_leg(self, tunnel: Tunnel) -> TcpLeg:
        stream = self.new_stream(tunnel, "")
        up = _PublicLeg(stream, "up")
        down = ChannelLeg(stream, "down")
        stream.bind(up, down)
        return up

    def open_owner_later(self, stream: Stream, orig: tuple[str, int]) -> None:
        down = stream.down
        assert isinstance(down, ChannelLeg)
        self.spawn(self._open_owner_or_close(stream, down, orig), f"open-{stream.stream_id}")

    async def _open_owner_or_close(
        self, stream: Stream, down: ChannelLeg, orig: tuple[str, int]
    ) -> None:
        try:
            await self._open_owner(stream, down, orig)
        except asyncssh.ChannelOpenError:
            stream.up.close()

    async def _open_owner(self, stream: Stream, down: ChannelLeg, orig: tuple[str, int]) -> None:
        tunnel = stream.tunnel
        try:
            await tunnel.conn.create_connection(
                lambda: down, tunnel.listen_host, tunnel.port, orig[0], orig[1]
            )
        except (asyncssh.ChannelOpenError, asyncssh.Error, OSError) as exc:
            stream.finish("agent_refused")
            reason = getattr(exc, "reason", str(exc))
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, f"{tunnel.target}: the agent refused: {reason}"
            ) from None

    def spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stream_opened(self, stream: Stream) -> None:
        self.live[stream.stream_id] = stream
        stream.tunnel.streams.add(stream)
        self._record(stream, "open")

    def stream_paused(self, stream: Stream, reason: PauseReason) -> None:
        self._record(stream, "pause")

    def stream_resumed(self, stream: Stream) -> None:
        self._record(stream, "resume")

    def stream_closed(self, stream: Stream) -> None:
        opened = self.live.pop(stream.stream_id, None) is not None
        stream.tunnel.streams.discard(stream)
        key = (stream.tunnel.agent.agent_id, stream.tunnel.tunnel_id)
        self.closed_usage[key] += stream.bytes_up + stream.bytes_down
        if opened:
            self._record(stream, "close")

    def interim(self) -> None:
        for stream in list(self.live.values()):
            self._record(stream, "interim")

    def _record(self, stream: Stream, event: str) -> None:
        now = self.now_ms()
        tunnel = stream.tunnel
        state = stream.state.value
        log.debug(
            f"stream_{event}",
            stream_id=stream.stream_id,
            tunnel_id=tunnel.tunnel_id,
            bytes_up=stream.bytes_up,
            bytes_down=stream.bytes_down,
            reason=stream.close_reason or None,
        )
        if self.streamlog is None:
            return
        self.streamlog.record(
            StreamRecord(
                event=event,
                at_ms=now,
                stream_id=stream.stream_id,
                tunnel_id=tunnel.tunnel_id,
                agent_id=tunnel.agent.agent_id,
                account=tunnel.agent.account,
                relay_id=self.config.relay_id,
                kind=tunnel.kind,
                peer=stream.peer_desc,
                target=tunnel.target,
                opened_at_ms=stream.opened_at_ms,
                bytes_up=stream.bytes_up,
                bytes_down=stream.bytes_down,
                bytes_dropped=stream.bytes_dropped,
                pauses=stream.clock.count,
                paused_ms=stream.clock.total_ms(now),
                state=state,
                close_reason=stream.close_reason or None,
            )
        )

    def close_all(self, reason: str) -> None:
        for stream in list(self.live.values()):
            stream.close(reason)
        for tunnel in self.tunnels.all():
            self.remove_tunnel(tunnel)

    async def drain_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- RelayControl (the admin API) ----------------------------------------------

    def _agent(self, agent_id: str) -> Agent:
        agent = self.registry.get(agent_id)
        if agent is None:
            raise UnknownAgent(agent_id)
        return agent

    def _view(self, agent: Agent) -> dict[str, object]:
        bucket = self.bucket_for(agent)
        state = bucket.state
        return {
            "agent_id": agent.agent_id,
            "account": agent.account,
            "role": agent.role.value,
            "state": state.value,
            "granted": bucket.granted,
            "used": bucket.used,
            "remaining": bucket.remaining,
            "streams": sum(1 for s in self.live.values() if s.tunnel.agent is agent),
            "waiting": bucket.waiting,
        }

    def grant(self, agent_id: str, nbytes: int) -> dict[str, object]:
        agent = self._agent(agent_id)
        bucket = self.bucket_for(agent)
        self.dispatch(bucket.grant(nbytes))
        self.check_low_water(bucket)
        log.info("granted", agent_id=agent_id, bytes=nbytes, remaining=bucket.remaining)
        return self._view(agent)

    def revoke(self, agent_id: str, nbytes: int) -> dict[str, object]:
        agent = self._agent(agent_id)
        back = self.bucket_for(agent).revoke(nbytes)
        log.info("revoked", agent_id=agent_id, bytes=back)
        return self._view(agent)

    def set_active(self, agent_id: str, active: bool) -> dict[str, object]:
        agent = self._agent(agent_id)
        bucket = self.bucket_for(agent)
        handle = self._grace.pop(agent_id, None)
        if handle is not None:
            handle.cancel()
        self.dispatch(bucket.set_inactive(not active))
        for stream in list(self.live.values()):
            if stream.tunnel.agent.agent_id != agent_id or stream.bucket is None:
                continue
            if active:
                stream.quota_check()  # resumes streams that hold nothing
            else:
                stream.quota_wait()  # pauses even idle streams
        if not active:
            delay = self.config.inactive_grace_ms / 1000
            self._grace[agent_id] = asyncio.get_running_loop().call_later(
                delay, self._grace_expired, agent_id
            )
        log.info("agent_state", agent_id=agent_id, active=active)
        return self._view(agent)

    def _grace_expired(self, agent_id: str) -> None:
        self._grace.pop(agent_id, None)
        for stream in list(self.live.values()):
            if stream.tunnel.agent.agent_id == agent_id:
                stream.close("inactive")

    def agents(self) -> list[dict[str, object]]:
        return [self._view(agent) for agent in self.registry]

    def streams(self) -> list[dict[str, object]]:
        return [
            {
                "stream_id": s.stream_id,
                "tunnel_id": s.tunnel.tunnel_id,
                "agent_id": s.tunnel.agent.agent_id,
                "kind": s.tunnel.kind,
                "peer": s.peer_desc,
                "target": s.tunnel.target,
                "state": s.state.value,
                "bytes_up": s.bytes_up,
                "bytes_down": s.bytes_down,
                "bytes_dropped": s.bytes_dropped,
                "pauses": s.clock.count,
            }
            for s in self.live.values()
        ]

    def status(self) -> dict[str, object]:
        return {
            "relay_id": self.config.relay_id,
            "uptime_ms": self.now_ms() - self.started_ms,
            "tunnels": len(self.tunnels),
            "streams": len(self.live),
            "depleted": sum(1 for b in self.buckets.values() if b.state is BucketState.DEPLETED),
            "sync": dict(self.quota_counters),
        }


def is_address(host: str) -> bool:
    """True for an IP address or a local host name: never an endpoint name."""
    if host.lower() in {"", "localhost", "*", "localhost.localdomain"}:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _PublicLeg(TcpLeg):
    """A public-port client: once accepted, open the owner's channel for it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        orig = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("", 0)
        self.stream.peer_desc = f"{orig[0]}:{orig[1]}"
        assert self.stream.tunnel.kind == PUBLIC
        self.stream.hub.open_owner_later(self.stream, orig)
