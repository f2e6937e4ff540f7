"""One UDP tunnel: its flows, its owner channel, its idle sweeper; kept as `Tunnel.server`.

Invariants:
- One forwarded-tcpip channel per tunnel to its owner, opened on first traffic,
  carries every flow. Datagrams wait (a bounded queue, not yet metered) while it
  opens; after a failed open they are dropped (counted) for `RETRY_OPEN_MS`.
- A flow idle for `udp.idle_timeout` ends; a tunnel that ends ends its flows,
  its public socket, its owner channel and the support channels bound to it.
- The flows live in a quota.core.flowtable.FlowTable: at most the owner's
  `streams_per_tunnel` flows, `udp_flows_per_source` of one source. A new peer
  is never refused: the idlest flow of its source, or of the table, is closed
  (reason `evicted_source` or `evicted_full`) to make room.
- A flow writes no stream-log record until it gets its first answer; one that
  ends unanswered is summed into its tunnel's `unanswered` record instead
  (relay.udp.relay), so a flood of one-datagram flows is not a row a datagram.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Protocol

import asyncssh

from quota.core.flowtable import FlowEnd, FlowTable, FlowTableConfig
from quota.core.streams import LegConnected
from relay.hub.hub import Hub
from relay.hub.stream import Stream
from relay.hub.tunnels import Tunnel
from relay.udp.channels import OwnerSession, SupportSession, UdpSide
from relay.udp.flow import UdpFlow

MAX_QUEUED = 256  # datagrams waiting for the owner's channel to open
RETRY_OPEN_MS = 1000  # after a failed open, drop datagrams this long before retrying


class UdpFlows(UdpSide, Protocol):
    """The relay's UDP side as a tunnel sees it (relay.udp.relay.UdpRelay)."""

    def new_flow_id(self) -> int: ...
    def new_stream_id(self) -> str: ...
    def unanswered(self, tunnel: Tunnel, flow: UdpFlow) -> None: ...
    def drain_unanswered(self, tunnel: Tunnel) -> None: ...


class UdpTunnel(asyncio.AbstractServer):
    """One UDP tunnel's flows and its owner channel; kept as `Tunnel.server`."""

    def __init__(self, hub: Hub, udp: UdpFlows, tunnel: Tunnel) -> None:
        self.udp = udp
        self.hub = hub
        self.tunnel = tunnel
        self.flows: dict[int, UdpFlow] = {}
        limits = hub.shares.limits_for(tunnel.agent)
        most = max(1, limits.streams_per_tunnel)
        per_source = max(1, min(limits.udp_flows_per_source, most))
        config = FlowTableConfig(max_flows=most, per_source=per_source)
        self.table: FlowTable[int] = FlowTable(config)
        self._table_ms = 0  # the table's clock: the wall clock, never going back
        self.transport: asyncio.DatagramTransport | None = None  # a public port
        self.owner: OwnerSession | None = None
        self.opening = False
        self.retry_at_ms = 0
        self.queued: deque[tuple[UdpFlow, bytes]] = deque()
        self.supports: set[SupportSession] = set()  # support channels bound to this tunnel
        self.closed = asyncio.Event()
        self._sweeper: asyncio.TimerHandle | None = None

    # -- flows ------------------------------------------------------------------

    def new_flow(self, peer_desc: str, on_close: Any, source: str) -> UdpFlow | None:
        """A flow for a new peer at `source`; it may push out the idlest flow (never refused)."""
        if self.closed.is_set():
            return None
        hub, flow_id = self.hub, self.udp.new_flow_id()
        touched = self.table.touch(flow_id, source=source, now=self._table_now())
        stream = Stream(
            hub,
            stream_id=self.udp.new_stream_id(),
            tunnel=self.tunnel,
            peer_desc=peer_desc,
            bucket=hub.bucket_for(self.tunnel.agent) if hub.config.metering else None,
            datagrams=True,
        )
        stream.quiet = True  # until its first answer
        flow = UdpFlow(
            stream, flow_id=flow_id, on_close=lambda f: self._forget(f, on_close), source=source
        )
        self.flows[flow_id] = self.udp.flows[flow_id] = flow
        stream.handle(LegConnected(all_connected=True, now_ms=hub.now_ms()))
        if touched.evicted is not None:
            self._end(touched.evicted)
        self._arm_sweeper()
        return flow

    def now_ms(self) -> int:
        return self.hub.now_ms()

    def _table_now(self) -> int:
        self._table_ms = max(self._table_ms, self.hub.now_ms())
        return self._table_ms

    def refresh(self, flow: UdpFlow) -> None:
        """A datagram from `flow`'s peer: it is the most recently active flow now."""
        flow.last_ms = self.hub.now_ms()
        if flow.flow_id in self.table:
            self.table.touch(flow.flow_id, source=flow.source, now=self._table_now())

    def answered(self, flow: UdpFlow, nbytes: int) -> None:
        """The owner answered `flow`: from its first answer on, the flow is logged."""
        flow.last_ms = self.hub.now_ms()
        if flow.flow_id not in self.table:
            return
        if self.table.answer(flow.flow_id, now=self._table_now(), nbytes=nbytes):
            flow.stream.quiet = False
            self.hub.record(flow.stream, "open")

    def _end(self, end: FlowEnd[int]) -> None:
        flow = self.flows.get(end.peer)
        if flow is not None:
            flow.close(end.reason.value)

    def _forget(self, flow: UdpFlow, on_close: Any) -> None:
        self.flows.pop(flow.flow_id, None)
        if self.udp.flows.get(flow.flow_id) is flow:
            del self.udp.flows[flow.flow_id]
        if flow.flow_id in self.table:
            self.table.remove(flow.flow_id)
        if flow.stream.quiet:
            self.udp.unanswered(self.tunnel, flow)
        on_close(flow)

    def _arm_sweeper(self) -> None:
        if self._sweeper is None and self.flows:
            every = min(max(self.hub.config.udp_idle_timeout_ms // 4, 10), 1000)
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(every / 1000, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now, idle_ms = self._table_now(), self.hub.config.udp_idle_timeout_ms
        for end in self.table.expire(now=now, idle_ms=idle_ms):
            flow = self.flows.get(end.peer)
            if flow is not None:
                flow.close("idle")
        self._arm_sweeper()

    # -- toward the owner ----------------------------------------------------------

    def to_owner(self, flow: UdpFlow, payload: bytes) -> None:
        """A datagram from the connecting side: meter it and frame it to the owner."""
        self.refresh(flow)
        owner = self.owner
        if owner is not None and not self.queued:
            owner.send(flow, payload)
        elif len(self.queued) < MAX_QUEUED and flow.last_ms >= self.retry_at_ms:
            self.queued.append((flow, payload))
            if not self.opening:
                self.opening = True
                self.hub.spawn(self._open_owner(), f"udp-open-{self.tunnel.tunnel_id}")
        else:
            flow.drop(len(payload))
            self.udp.refusals.refuse("owner_unavailable", tunnel_id=self.tunnel.tunnel_id)

    async def _open_owner(self) -> None:
        tunnel = self.tunnel
        session = OwnerSession(self)
        try:
            await tunnel.conn.create_connection(
                lambda: session, tunnel.listen_host, tunnel.port, "", 0
            )
        except (asyncssh.Error, OSError) as exc:
            self.retry_at_ms = self.hub.now_ms() + RETRY_OPEN_MS
            reason = getattr(exc, "reason", str(exc))
            self.udp.refusals.refuse("agent_refused", tunnel_id=tunnel.tunnel_id, error=reason)
            while self.queued:
                flow, payload = self.queued.popleft()
                flow.drop(len(payload))
        finally:
            self.opening = False

    def owner_ready(self, session: OwnerSession) -> None:
        self.owner = session
        while self.queued and self.owner is session:
            flow, payload = self.queued.popleft()
            if flow.state.value != "closed":
                session.send(flow, payload)

    def owner_lost(self, session: OwnerSession) -> None:
        if self.owner is session:
            self.owner = None

    # -- AbstractServer: what the hub and the SSH listener call ------------------------

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for flow in list(self.flows.values()):
            flow.close("tunnel_closed")
        self.udp.drain_unanswered(self.tunnel)
        if self.transport is not None:
            self.transport.close()
        if self.owner is not None:
            self.owner.close()
        for support in list(self.supports):
            support.close()  # the support agent reopens toward the tunnel that replaces this one

    async def wait_closed(self) -> None:
        await self.closed.wait()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def is_serving(self) -> bool:
        return not self.closed.is_set()

    async def start_serving(self) -> None:
        """Serving starts with the tunnel; nothing to do."""

    async def serve_forever(self) -> None:
        await self.closed.wait()
