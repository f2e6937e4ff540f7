"""UDP tunnels: registration, each tunnel's flows, its owner channel and public port.

SSH forwards no UDP, so `quotarelay agent` rides on standard SSH messages:
`tcpip-forward` to "udp/<name>" registers a UDP endpoint, to "udp/" a public UDP
port (0: the relay picks); `direct-tcpip` to "udp/<name>" reaches an endpoint.
Datagrams travel on those channels as frames (quota.core.frames, relay.udp_channels).

Invariants:
- Role and account rules are those of TCP: a support agent cannot register, a
  client agent cannot reach, names live in the account's namespace, an inactive
  owner is refused, an address is never dialled.
- Flow ids on an owner's channel are assigned by the relay, unique across the
  relay; a support agent's flow ids are its own and are mapped to the relay's,
  so no agent can name a flow of another channel. A frame on an owner channel
  for a flow of another tunnel, or an unknown flow, is refused and dropped.
- One forwarded-tcpip channel per tunnel to its owner, opened on first traffic,
  carries every flow. Datagrams wait (a bounded queue, not yet metered) while it
  opens; metering happens as a datagram is written, so `used` counts only bytes
  handed on. A channel whose write buffer is full drops datagrams (counted).
- Bad input (malformed or oversized frame, unknown or foreign flow) is refused
  through one `RefusalLog`; the channel, the tunnel and every other flow go on.
- A flow idle for `udp.idle_timeout` ends; a tunnel that ends ends its flows
  (relay.udp.tunnel).
- Flows that end without an answer are summed per tunnel
  (quota.core.flowtable.UnansweredSummary) and written as one `unanswered`
  record a tunnel per `udp.unanswered_interval`, and when the tunnel ends.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import weakref
from typing import Any

import structlog

from quota.core.flowtable import EndReason, FlowEnd, UnansweredRow, UnansweredSummary
from quota.core.frames import MAX_FLOW_ID
from quota.sockets import widen_buffers
from relay.errors import Refused
from relay.hub.hub import Hub
from relay.hub.tunnels import UDP_ENDPOINT, UDP_PUBLIC, Tunnel, is_address
from relay.registry import Agent
from relay.udp.channels import PublicUdp, SupportSession
from relay.udp.flow import RefusalLog, UdpFlow
from relay.udp.tunnel import UdpTunnel

log = structlog.get_logger("relay.udp")

UDP_PREFIX = "udp/"

_RELAYS: weakref.WeakKeyDictionary[Hub, UdpRelay] = weakref.WeakKeyDictionary()


def udp_for(hub: Hub) -> UdpRelay:
    """The UDP side of `hub`, made on first use."""
    relay = _RELAYS.get(hub)
    if relay is None:
        relay = _RELAYS[hub] = UdpRelay(hub)
    return relay


def udp_of(hub: Hub) -> UdpRelay | None:
    """The UDP side of `hub` if it was made (metrics read it without making one)."""
    return _RELAYS.get(hub)


class UdpRelay:
    """Every UDP tunnel and flow of one relay."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.flows: dict[int, UdpFlow] = {}  # by relay flow id
        self.refusals = RefusalLog(hub.now_ms)
        self.summary = UnansweredSummary(hub.config.udp_unanswered_interval_ms)
        self._summed: dict[str, Tunnel] = {}  # tunnels with a pending unanswered row
        self._flusher: asyncio.TimerHandle | None = None
        self._ids = itertools.count(1)
        self._next_flow = 0
        if hub.book is not None:
            hub.book.pending = self.pending  # the journal counts what these sums hold

    @property
    def max_datagram(self) -> int:
        return self.hub.config.udp_max_datagram

    @property
    def write_buffer(self) -> int:
        return self.hub.config.write_buffer

    def new_flow_id(self) -> int:
        while True:
            self._next_flow = self._next_flow % MAX_FLOW_ID + 1
            if self._next_flow not in self.flows:
                return self._next_flow

    def new_stream_id(self) -> str:
        return self.hub.stream_id(f"u{next(self._ids)}")

    # -- flows that were never answered: one record a tunnel an interval ------------------

    def unanswered(self, tunnel: Tunnel, flow: UdpFlow) -> None:
        """Sum a flow that ended unanswered into its tunnel's pending record."""
        end = FlowEnd(
            peer=flow.flow_id,
            source=flow.source,
            reason=EndReason.CLOSED,
            opened_at=flow.stream.opened_at_ms,
            last_at=flow.last_ms,
            bytes_in=flow.bytes_up,
            bytes_out=0,
        )
        self.summary.add(tunnel.tunnel_id, end, now=self.hub.now_ms(), dropped=flow.bytes_dropped)
        self._summed[tunnel.tunnel_id] = tunnel
        if self._flusher is None:
            every = min(max(self.summary.interval_ms // 4, 10), 1000)
            self._flusher = asyncio.get_running_loop().call_later(every / 1000, self._flush)

    def drain_unanswered(self, tunnel: Tunnel) -> None:
        """The tunnel ends: write its pending record now."""
        self._write(self.summary.drain(self.hub.now_ms(), tunnel.tunnel_id))

    def _flush(self) -> None:
        self._flusher = None
        self._write(self.summary.flush(self.hub.now_ms()))
        if len(self.summary):
            every = min(max(self.summary.interval_ms // 4, 10), 1000)
            self._flusher = asyncio.get_running_loop().call_later(every / 1000, self._flush)

    def _write(self, rows: list[UnansweredRow]) -> None:
        for row in rows:
            tunnel = self._summed.pop(row.tunnel, None)
            if tunnel is not None:
                stream_id = self.hub.stream_id(f"n{next(self._ids)}")
                self.hub.recorder.unanswered(stream_id=stream_id, tunnel=tunnel, row=row)
                if self.hub.book is not None:
                    sums = (row.flows, row.bytes_in, row.bytes_dropped)
                    self.hub.book.unanswered_written(stream_id, tunnel, sums, row.since)

    def pending(self) -> dict[str, tuple[Tunnel, int, int, int]]:
        """Each tunnel's unanswered flows ended but not yet written in a record."""
        return {
            tunnel_id: (self._summed[tunnel_id], *sums)
            for tunnel_id, sums in self.summary.pending().items()
            if tunnel_id in self._summed
        }

    # -- registration (tcpip-forward "udp/...") --------------------------------------

    async def register(self, agent: Agent, listen_host: str, port: int, conn: Any) -> Tunnel:
        name = listen_host[len(UDP_PREFIX) :].lower()
        hub = self.hub
        hub.check_may_expose(agent)
        if not name:
            return await self._add_public(agent, listen_host, port, conn)
        if port == 0:
            raise Refused(f"UDP endpoint {name} needs a port, as in --udp {name}:53:...")
        if is_address(name) or name == "0.0.0.0":
            raise Refused(f"{name} is an address, not an endpoint name")
        tunnel = hub.tunnels.add_endpoint(agent, name, port, conn, kind=UDP_ENDPOINT)
        tunnel.server = UdpTunnel(self.hub, self, tunnel)
        log.info("tunnel_opened", tunnel_id=tunnel.tunnel_id, agent_id=agent.agent_id)
        return tunnel

    async def _add_public(self, agent: Agent, listen_host: str, port: int, conn: Any) -> Tunnel:
        hub = self.hub
        busy: set[int] = set()  # ports of the range something else holds on this host
        while True:
            chosen = hub.tunnels.pick_port(agent, port, avoid=busy)
            tunnel = hub.tunnels.add_public(agent, chosen, listen_host, conn, kind=UDP_PUBLIC)
            server = UdpTunnel(hub, self, tunnel)
            try:
                transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                    functools.partial(PublicUdp, server),
                    local_addr=(hub.config.public_bind, chosen),
                )
                break
            except OSError as exc:
                hub.tunnels.remove(tunnel)
                if port:  # a port asked for by number: no other will do
                    raise Refused(
                        f"UDP port {chosen} cannot be opened on this relay: {exc.strerror}"
                    ) from None
                busy.add(chosen)
        widen_buffers(transport)
        server.transport = transport
        tunnel.server = server
        log.info("tunnel_opened", tunnel_id=tunnel.tunnel_id, agent_id=agent.agent_id, port=chosen)
        return tunnel

    # -- the support side (direct-tcpip "udp/...") -------------------------------------

    def resolve(self, agent: Agent, host: str, port: int) -> Tunnel:
        """The UDP endpoint a support agent asks for, or a refusal that reveals nothing."""
        name = host[len(UDP_PREFIX) :].lower()
        if not agent.role.may_connect:
            raise Refused(f"agent {agent.agent_id} is a client agent and cannot reach endpoints")
        if is_address(name):
            raise Refused(
                f"the relay does not dial {name}:{port}: name an endpoint of your account"
            )
        tunnel = self.hub.tunnels.find_endpoint(agent.account, name, port, kind=UDP_ENDPOINT)
        if tunnel is None:
            raise Refused(f"no UDP endpoint {name}:{port} in your account")
        if self.hub.bucket_for(tunnel.agent).inactive:
            raise Refused(f"UDP endpoint {name}:{port} belongs to an inactive agent")
        return tunnel

    def support_session(
        self, agent: Agent, host: str, port: int, orig: tuple[str, int]
    ) -> SupportSession:
        tunnel = self.resolve(agent, host, port)
        server = tunnel.server
        assert isinstance(server, UdpTunnel)
        return SupportSession(server, f"support:{agent.agent_id}@{orig[0]}:{orig[1]}")
