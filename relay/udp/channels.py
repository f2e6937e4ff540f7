"""The framed channels of UDP tunnels, and the public UDP port's socket.

Invariants:
- A frame is decoded (quota.core.frames), checked and acted on at once; bad input (flow 0, a frame
  above `udp.max_datagram`, a cut frame, a flow id the relay never gave this
  channel's tunnel) is refused through the relay's `RefusalLog` and skipped:
  the channel and every other flow go on.
- An owner channel may name only flows of its own tunnel (ids the relay gave);
  a support channel names flows with its own ids, mapped here to the relay's.
- Metering happens as a datagram is written on: `admit_up` toward the owner,
  `admit_down` toward the connecting side. A channel whose write buffer is
  full (`pause_writing`), or whose SSH connection's is (relay.ssh.backlog),
  drops datagrams, counted as dropped, never as used.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Protocol, cast

import asyncssh

from quota.core.frames import FramedProtocol, Malformed, encode
from relay.hub.tunnels import Tunnel
from relay.ssh.backlog import NEVER_FULL, backlog_of
from relay.udp.flow import RefusalLog, UdpFlow


class UdpSide(Protocol):
    """The relay's UDP side as its channels see it (relay.udp.relay.UdpRelay)."""

    flows: dict[int, UdpFlow]
    refusals: RefusalLog

    @property
    def max_datagram(self) -> int: ...
    @property
    def write_buffer(self) -> int: ...


class FlowServer(Protocol):
    """One UDP tunnel as its channels see it (relay.udp.tunnel.UdpTunnel)."""

    tunnel: Tunnel
    supports: set[Any]

    @property
    def udp(self) -> UdpSide: ...

    def now_ms(self) -> int: ...
    def new_flow(self, peer_desc: str, on_close: Any, source: str) -> UdpFlow | None: ...
    def refresh(self, flow: UdpFlow) -> None: ...
    def answered(self, flow: UdpFlow, nbytes: int) -> None: ...
    def to_owner(self, flow: UdpFlow, payload: bytes) -> None: ...
    def owner_ready(self, session: Any) -> None: ...
    def owner_lost(self, session: Any) -> None: ...


class _FramedSession(FramedProtocol, asyncssh.SSHTCPSession[bytes]):
    """The relay's side of a framed channel: refusals are counted and logged."""

    def __init__(self, server: FlowServer) -> None:
        super().__init__(server.udp.max_datagram)
        self.server = server
        self.udp = server.udp
        self.backlog = NEVER_FULL

    @property
    def congested(self) -> bool:
        """The channel has no window and its buffer is full, or its connection's buffer is."""
        return self._channel_full or self.backlog.full

    @congested.setter
    def congested(self, full: bool) -> None:
        self._channel_full = full  # FramedProtocol's pause_writing and resume_writing

    def connection_made(self, chan: Any) -> None:
        super().connection_made(chan)
        self.backlog = backlog_of(chan.get_connection(), self.udp.write_buffer)

    def on_malformed(self, reason: str) -> None:
        self.refuse("malformed", reason=reason)

    def eof_received(self) -> bool:
        if isinstance(self.decoder.close(), Malformed):
            self.refuse("truncated")
        return False

    def write_frame(self, flow_id: int, payload: bytes) -> None:
        if self.chan is not None:
            self.chan.write(encode(flow_id, payload))

    def close(self) -> None:
        if self.chan is not None:
            self.chan.close()

    def refuse(self, cause: str, **context: Any) -> None:
        self.udp.refusals.refuse(cause, tunnel_id=self.server.tunnel.tunnel_id, **context)


class OwnerSession(_FramedSession):
    """The owner's channel: the relay names the flows; frames carry replies."""

    def connection_made(self, chan: Any) -> None:
        super().connection_made(chan)
        self.server.owner_ready(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.owner_lost(self)

    def send(self, flow: UdpFlow, payload: bytes) -> None:
        if self.congested:
            flow.drop(len(payload))
            self.refuse("congested", flow_id=flow.flow_id)
        elif flow.admit_up(len(payload)):
            self.write_frame(flow.flow_id, payload)

    def _flow(self, flow_id: int) -> UdpFlow | None:
        flow = self.udp.flows.get(flow_id)
        if flow is None:
            self.refuse("unknown_flow", flow_id=flow_id)
            return None
        if flow.tunnel is not self.server.tunnel:
            same = flow.tunnel.agent.account == self.server.tunnel.agent.account
            self.refuse("other_tunnel" if same else "other_account", flow_id=flow_id)
            return None
        return flow

    def on_frame(self, flow_id: int, payload: bytes) -> None:
        flow = self._flow(flow_id)
        if flow is not None:
            self.server.answered(flow, len(payload))
            if flow.reply is not None:
                flow.reply(flow, payload)

    def on_oversized(self, flow_id: int, length: int) -> None:
        flow = self._flow(flow_id)
        if flow is not None:
            flow.drop(length)
        self.refuse("oversized", flow_id=flow_id, length=length)


class SupportSession(_FramedSession):
    """A support agent's channel to a UDP endpoint; its flow ids map to the relay's."""

    def __init__(self, server: FlowServer, peer_desc: str) -> None:
        super().__init__(server)
        self.peer_desc = peer_desc
        self.flows: dict[int, UdpFlow] = {}  # by the support agent's own flow id
        self.own_ids: dict[UdpFlow, int] = {}

    def connection_made(self, chan: Any) -> None:
        super().connection_made(chan)
        self.server.supports.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.supports.discard(self)
        for flow in list(self.flows.values()):
            flow.close("peer_closed")

    def _flow(self, sflow: int) -> UdpFlow | None:
        flow = self.flows.get(sflow)
        if flow is None:
            desc = f"{self.peer_desc} flow {sflow}"
            # its own source: the per-source share is for strangers on public ports
            flow = self.server.new_flow(desc, self._forget, source=desc)
            if flow is not None:
                self.flows[sflow] = flow
                self.own_ids[flow] = sflow
                flow.reply = self._reply
        return flow

    def _forget(self, flow: UdpFlow) -> None:
        sflow = self.own_ids.pop(flow, None)
        if sflow is not None:
            self.flows.pop(sflow, None)

    def on_frame(self, flow_id: int, payload: bytes) -> None:
        flow = self._flow(flow_id)
        if flow is not None:
            self.server.to_owner(flow, payload)

    def on_oversized(self, flow_id: int, length: int) -> None:
        flow = self._flow(flow_id)
        if flow is not None:
            flow.drop(length)
        self.refuse("oversized", flow_id=flow_id, length=length)

    def _reply(self, flow: UdpFlow, payload: bytes) -> None:
        sflow = self.own_ids.get(flow)
        if sflow is None:
            return
        if self.congested:
            flow.drop(len(payload))
            self.refuse("congested", flow_id=flow.flow_id)
        elif flow.admit_down(len(payload)):
            self.write_frame(sflow, payload)


class PublicUdp(asyncio.DatagramProtocol):
    """A public UDP port: each peer address is a flow."""

    def __init__(self, server: FlowServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None
        self.by_addr: dict[Any, UdpFlow] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        server = self.server
        flow = self.by_addr.get(addr)
        if flow is None:
            forget = functools.partial(self._forget, addr)
            flow = server.new_flow(f"{addr[0]}:{addr[1]}", forget, source=str(addr[0]))
            if flow is None:
                return
            self.by_addr[addr] = flow
            flow.reply = lambda f, payload: self._reply(f, payload, addr)
        if len(data) > server.udp.max_datagram:
            server.refresh(flow)
            flow.drop(len(data))
            server.udp.refusals.refuse(
                "oversized", tunnel_id=server.tunnel.tunnel_id, length=len(data)
            )
            return
        server.to_owner(flow, data)

    def _forget(self, addr: Any, flow: UdpFlow) -> None:
        if self.by_addr.get(addr) is flow:
            del self.by_addr[addr]

    def _reply(self, flow: UdpFlow, payload: bytes, addr: Any) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            flow.drop(len(payload))
        elif flow.admit_down(len(payload)):
            transport.sendto(payload, addr)

    def error_received(self, exc: Exception) -> None:
        """An ICMP error for an earlier datagram (a peer gone): nothing to do."""
