"""TCP tunnels: endpoints and public ports of client agents, and the streams through them.

Invariants:
- Role and account rules: a support agent cannot register, a client agent
  cannot reach, names live in the account's namespace, an inactive owner is
  refused, an address is never dialled.
- A stream through a tunnel always ends at its owner: a forwarded-tcpip channel
  on the owner's connection. If the owner refuses it, the stream closes with
  reason "agent_refused" and the connecting side is told why.
- Fair shares: a tunnel carries at most `streams_per_tunnel` live streams, and
  one source address at most `connections_per_source` connections on one public
  port (both under the owner's limits). A refused support agent is told why in
  its channel open failure; a refused public peer is closed at once. Either
  writes one `refused` record; the stream gives its shares back when it closes.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from typing import Any, cast

import asyncssh
import structlog

from quota.core.admission import Kind
from quota.core.shares import Share
from relay.descriptors import LISTEN_BACKLOG
from relay.errors import Refused
from relay.hub.hub import Hub
from relay.hub.recorder import Attempt
from relay.hub.shares import Held
from relay.hub.stream import Stream
from relay.hub.tunnels import PUBLIC, Tunnel, is_address
from relay.registry import Agent
from relay.tcp.pump import ChannelLeg, TcpLeg, keep_alive
from relay.tcp.stream import TcpPair

log = structlog.get_logger("relay")


# What a stream between workers holds in the socket pair and in the owner's worker's
# write buffer to it, each way: a stalled reader costs the relay about one `write_buffer`
# (in the support agent's worker) plus this twice, not two write buffers.
PAIR_BUFFER = 32 * 1024


class TcpTunnels:
    """Registers TCP tunnels and opens the streams through them."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def add_endpoint(self, agent: Agent, name: str, port: int, conn: Any) -> Tunnel:
        self.hub.check_may_expose(agent)
        tunnel = self.hub.tunnels.add_endpoint(agent, name, port, conn)
        log.info("tunnel_opened", tunnel_id=tunnel.tunnel_id, agent_id=agent.agent_id)
        return tunnel

    async def add_public(self, agent: Agent, listen_host: str, port: int, conn: Any) -> Tunnel:
        hub = self.hub
        hub.check_may_expose(agent)
        busy: set[int] = set()  # ports of the range something else holds on this host
        while True:
            chosen = hub.tunnels.pick_port(agent, port, avoid=busy)
            tunnel = hub.tunnels.add_public(agent, chosen, listen_host, conn)
            try:
                tunnel.server = await asyncio.get_running_loop().create_server(
                    functools.partial(self._public_leg, tunnel),
                    hub.config.public_bind,
                    chosen,
                    reuse_address=True,
                    backlog=LISTEN_BACKLOG,
                )
                for sock in tunnel.server.sockets:
                    keep_alive(sock)  # inherited by every connection it accepts
                break
            except OSError as exc:
                hub.tunnels.remove(tunnel)
                if port:  # a port asked for by number: no other will do
                    raise Refused(f"port {chosen} cannot be opened on this relay: {exc}") from None
                busy.add(chosen)
        log.info("tunnel_opened", tunnel_id=tunnel.tunnel_id, agent_id=agent.agent_id, port=chosen)
        return tunnel

    def resolve(self, agent: Agent, host: str, port: int) -> Tunnel:
        """The endpoint a support agent asks for, or a refusal that reveals nothing."""
        if not agent.role.may_connect:
            raise Refused(f"agent {agent.agent_id} is a client agent and cannot reach endpoints")
        if is_address(host):
            raise Refused(
                f"the relay does not dial {host}:{port}: name an endpoint of your account"
            )
        tunnel = self.hub.tunnels.find_endpoint(agent.account, host.lower(), port)
        if tunnel is None:
            raise Refused(f"no endpoint {host}:{port} in your account")
        if self.hub.bucket_for(tunnel.agent).inactive:
            raise Refused(f"endpoint {host}:{port} belongs to an inactive agent")
        return tunnel

    # -- streams ------------------------------------------------------------------

    def _new_pair(self, tunnel: Tunnel, peer_desc: str, write_buffer: int = 0) -> TcpPair:
        hub = self.hub
        bucket = hub.bucket_for(tunnel.agent) if hub.config.metering else None
        stream = Stream(
            hub, stream_id=hub.stream_id(), tunnel=tunnel, peer_desc=peer_desc, bucket=bucket
        )
        return TcpPair(stream, write_buffer=write_buffer or hub.config.write_buffer)

    def take_shares(
        self, tunnel: Tunnel, peer: str, *scoped: tuple[Share, object]
    ) -> tuple[Held, ...]:
        """Take each share for a new stream of `tunnel`, all or none; a refusal is recorded."""
        shares, held = self.hub.shares, cast(tuple[Held, ...], ())
        try:
            for share, scope in scoped:
                held += (shares.take(share, tunnel.agent, scope),)
        except Refused as exc:
            for one in held:
                shares.release(one)
            what = f"stream of {tunnel.tunnel_id} from {peer}"
            self.hub.refuse(None, tunnel.agent, what, exc, Attempt.on(tunnel, peer))
            raise
        return held

    async def bridge(self, support: Agent, tunnel: Tunnel, orig: tuple[str, int]) -> ChannelLeg:
        """Open the owner's forwarded-tcpip channel; return the support side's leg."""
        peer = f"support:{support.agent_id}@{orig[0]}:{orig[1]}"
        try:
            held = self.take_shares(tunnel, peer, (Share.STREAMS_PER_TUNNEL, tunnel.tunnel_id))
        except Refused as exc:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, f"quotarelay: {exc}"
            ) from None
        pair = self._new_pair(tunnel, peer)
        pair.stream.held = held
        up, down = ChannelLeg(pair, "up"), ChannelLeg(pair, "down")
        pair.bind(up, down)
        try:
            await self._open_owner(pair, down, orig)
        except asyncio.CancelledError:  # the support agent went away meanwhile
            pair.stream.close("peer_closed", close_legs=False)  # gives its shares back
            raise
        return up

    async def bridge_socket(
        self, tunnel: Tunnel, peer: str, held: tuple[Held, ...], sock: Any, orig: tuple[str, int]
    ) -> None:
        """A stream from `sock` (another worker's end of a socket pair) to the owner.

        Metered and logged here, as any stream of `tunnel`; raises ChannelOpenError
        (the socket closed) when the owner refuses.
        """
        # the socket's own buffer is small: the support agent's worker holds `write_buffer`
        pair = self._new_pair(tunnel, peer, min(PAIR_BUFFER, self.hub.config.write_buffer))
        pair.stream.held = held
        up, down = TcpLeg(pair, "up"), ChannelLeg(pair, "down")
        pair.bind(up, down)
        await asyncio.get_running_loop().connect_accepted_socket(lambda: up, sock)
        try:
            await self._open_owner(pair, down, orig)
        except asyncssh.ChannelOpenError:
            up.close()
            raise

    def _public_leg(self, tunnel: Tunnel) -> TcpLeg:
        pair = self._new_pair(tunnel, "")
        up = _PublicLeg(pair, "up", self)
        pair.bind(up, ChannelLeg(pair, "down"))
        return up

    def open_owner_later(self, pair: TcpPair, orig: tuple[str, int]) -> None:
        down = pair.down
        assert isinstance(down, ChannelLeg)
        name = f"open-{pair.stream.stream_id}"
        self.hub.spawn(self._open_owner_or_close(pair, down, orig), name)

    async def _open_owner_or_close(
        self, pair: TcpPair, down: ChannelLeg, orig: tuple[str, int]
    ) -> None:
        try:
            await self._open_owner(pair, down, orig)
        except asyncssh.ChannelOpenError:
            pair.up.close()

    async def _open_owner(self, pair: TcpPair, down: ChannelLeg, orig: tuple[str, int]) -> None:
        tunnel = pair.stream.tunnel
        try:
            await tunnel.conn.create_connection(
                lambda: down, tunnel.listen_host, tunnel.port, orig[0], orig[1]
            )
        except (asyncssh.ChannelOpenError, asyncssh.Error, OSError) as exc:
            pair.stream.close("agent_refused", close_legs=False)
            reason = getattr(exc, "reason", str(exc))
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, f"{tunnel.target}: the agent refused: {reason}"
            ) from None


class _PublicLeg(TcpLeg):
    """A public-port client: once the gate admits it, open the owner's channel for it."""

    __slots__ = ("admitted", "pair", "tunnels")

    options_from_listener = True  # the public port's listener set them (TcpTunnels.add_public)

    def __init__(self, pair: TcpPair, name: str, tunnels: TcpTunnels) -> None:
        super().__init__(pair, name)
        self.pair = pair
        self.tunnels = tunnels
        self.admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        # one host string per source, whatever number of connections hold it
        orig = (sys.intern(str(peer[0])), int(peer[1])) if isinstance(peer, tuple) else ("", 0)
        self.admitted = self.tunnels.hub.gate.connect(self, orig[0], Kind.PUBLIC)
        if not self.admitted:
            cast(asyncio.Transport, transport).abort()  # over the limit: no stream, nothing read
            return
        super().connection_made(transport)
        stream = self.pair.stream
        stream.peer_desc = f"{orig[0]}:{orig[1]}"
        tunnel = stream.tunnel
        assert tunnel.kind == PUBLIC
        try:
            stream.held = self.tunnels.take_shares(
                tunnel,
                stream.peer_desc,
                (Share.STREAMS_PER_TUNNEL, tunnel.tunnel_id),
                (Share.CONNECTIONS_PER_SOURCE, (tunnel.tunnel_id, orig[0])),
            )
        except Refused:
            assert self.transport is not None
            self.transport.abort()  # closed at once: the stream never opens, nothing is owed
            return
        self.tunnels.open_owner_later(self.pair, orig)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.admitted:
            return
        self.admitted = False
        self.tunnels.hub.gate.closed(self)
        super().connection_lost(exc)
