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
- A flow idle for `udp.idle_timeout` ends; a tunnel that ends ends its flows.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import weakref
from collections import deque
from typing import Any

import asyncssh
import structlog

from quota.core.frames import MAX_FLOW_ID
from relay.errors import Refused
from relay.hub.hub import Hub, is_address
from relay.hub.tunnels import UDP_ENDPOINT, UDP_PUBLIC, Tunnel
from relay.registry import Agent
from relay.udp.channels import OwnerSession, PublicUdp, SupportSession
from relay.udp.flow import RefusalLog, UdpFlow, widen_buffers

log = structlog.get_logger("relay.udp")

UDP_PREFIX = "udp/"
MAX_FLOWS_PER_TUNNEL = 4096
MAX_QUEUED = 256  # datagrams waiting for the owner's channel to open
RETRY_OPEN_MS = 1000  # after a failed open, drop datagrams this long before retrying

_RELAYS: weakref.WeakKeyDictionary[Hub, UdpRelay] = weakref.WeakKeyDictionary()


def udp_for(hub: Hub) -> UdpRelay:
    """The UDP side of `hub`, made on first use."""
    relay = _RELAYS.get(hub)
    if relay is None:
        relay = _RELAYS[hub] = UdpRelay(hub)
    return relay


class UdpRelay:
    """Every UDP tunnel and flow of one relay."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.flows: dict[int, UdpFlow] = {}  # by relay flow id
        self.refusals = RefusalLog(hub.now_ms)
        self._ids = itertools.count(1)
        self._next_flow = 0

    @property
    def max_datagram(self) -> int:
        return self.hub.config.udp_max_datagram

    def new_flow_id(self) -> int:
        while True:
            self._next_flow = self._next_flow % MAX_FLOW_ID + 1
            if self._next_flow not in self.flows:
                return self._next_flow

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
        tunnel.server = UdpTunnel(self, tunnel)
        log.info("tunnel_opened", tunnel_id=tunnel.tunnel_id, agent_id=agent.agent_id)
        return tunnel

    async def _add_public(self, agent: Agent, listen_host: str, port: int, conn: Any) -> Tunnel:
        hub = self.hub
        busy: set[int] = set()  # ports of the range something else holds on this host
        while True:
            chosen = hub.tunnels.pick_port(agent, port, avoid=busy)
            tunnel = hub.tunnels.add_public(agent, chosen, listen_host, conn, kind=UDP_PUBLIC)
            server = UdpTunnel(self, tunnel)
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


class UdpTunnel(asyncio.AbstractServer):
    """One UDP tunnel's flows and its owner channel; kept as `Tunnel.server`."""

    def __init__(self, udp: UdpRelay, tunnel: Tunnel) -> None:
        self.udp = udp
        self.hub = udp.hub
        self.tunnel = tunnel
        self.flows: dict[int, UdpFlow] = {}
        self.transport: asyncio.DatagramTransport | None = None  # a public port
        self.owner: OwnerSession | None = None
        self.opening = False
        self.retry_at_ms = 0
        self.queued: deque[tuple[UdpFlow, bytes]] = deque()
        self.supports: set[SupportSession] = set()  # support channels bound to this tunnel
        self.closed = asyncio.Event()
        self._sweeper: asyncio.TimerHandle | None = None

    # -- flows ------------------------------------------------------------------

    def new_flow(self, peer_desc: str, on_close: Any) -> UdpFlow | None:
        if self.closed.is_set():
            return None
        if len(self.flows) >= MAX_FLOWS_PER_TUNNEL:
            self.udp.refusals.refuse("too_many_flows", tunnel_id=self.tunnel.tunnel_id)
            return None
        hub, flow_id = self.hub, self.udp.new_flow_id()
        started = f"{hub.started_ms:x}"
        flow = UdpFlow(
            hub,
            stream_id=f"{hub.config.relay_id}-{started}-u{next(self.udp._ids)}",
            tunnel=self.tunnel,
            peer_desc=peer_desc,
            bucket=hub.bucket_for(self.tunnel.agent) if hub.config.metering else None,
            flow_id=flow_id,
            on_close=lambda f: self._forget(f, on_close),
        )
        self.flows[flow_id] = self.udp.flows[flow_id] = flow
        hub.stream_opened(flow)
        self._arm_sweeper()
        return flow

    def _forget(self, flow: UdpFlow, on_close: Any) -> None:
        self.flows.pop(flow.flow_id, None)
        if self.udp.flows.get(flow.flow_id) is flow:
            del self.udp.flows[flow.flow_id]
        on_close(flow)

    def _arm_sweeper(self) -> None:
        if self._sweeper is None and self.flows:
            every = min(max(self.hub.config.udp_idle_timeout_ms // 4, 10), 1000)
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(every / 1000, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        deadline = self.hub.now_ms() - self.hub.config.udp_idle_timeout_ms
        for flow in [f for f in self.flows.values() if f.last_ms <= deadline]:
            flow.close("idle")
        self._arm_sweeper()

    # -- toward the owner ----------------------------------------------------------

    def to_owner(self, flow: UdpFlow, payload: bytes) -> None:
        """A datagram from the connecting side: meter it and frame it to the owner."""
        flow.last_ms = self.hub.now_ms()
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
