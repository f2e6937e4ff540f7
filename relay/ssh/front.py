"""The SSH front: agents log in with a public key and ask for forwards.

Invariants:
- Only public-key authentication; the user name is the agent id and the key must
  be one of that agent's keys.
- `-R name:port:...` registers an endpoint `name` in the agent's account; a
  bind address of "", "localhost", "0.0.0.0", "*", "::" or an IP asks for a
  public port. `-L`/`-J` (direct-tcpip) reach only endpoints of the agent's own
  account; no host:port outside the tunnel table is ever dialled.
- A host "udp/..." in either asks for a UDP tunnel (relay.udp), same rules;
  other hosts are TCP tunnels (relay.tcp).
- A client agent's `-R` is answered once the lease its tunnel primes is in its
  bucket, or after one sync interval (2 s at most) (relay.hub.hub.Hub.lease_ready),
  so a stream that follows the answer does not wait for a first lease.
- Every refusal opens nothing; the agent sees the reason (channel open failure
  text, or a debug message for a refused `-R`).
- Before login every connection passes the gate (relay.hub.gate): dropped at
  once, or admitted and reported closed exactly once; a rejected key is
  counted there, and too many of them, or no login within the grace time,
  disconnect with the reason.
- After login an agent holds one of its `ssh_connections_per_agent`, and each
  channel it opens one of its connection's `channels_per_connection`, until it
  closes; a refusal of either writes one `refused` record with its cause.
"""

from __future__ import annotations

import functools
from typing import Any

import asyncssh
import structlog

from quota.core.admission import Disconnect, Kind, Reason
from quota.core.shares import Share
from relay.errors import Refused
from relay.hub.hub import Hub
from relay.hub.recorder import Attempt
from relay.hub.shares import Held
from relay.hub.tunnels import (
    ENDPOINT,
    PUBLIC,
    UDP_ENDPOINT,
    UDP_PUBLIC,
    Tunnel,
    is_address,
    tunnel_id,
)
from relay.registry import Agent
from relay.ssh.backlog import backlog_of
from relay.ssh.slimchan import on_closed, slim_channels
from relay.tcp.tunnels import TcpTunnels
from relay.udp.relay import UDP_PREFIX, udp_for

log = structlog.get_logger("relay.ssh")


def is_public_bind(host: str) -> bool:
    """A bind address (not a name) in `-R` asks for a public port."""
    return is_address(host) or host == "0.0.0.0"


def _tunnel_share(listen_host: str) -> Share:
    """The per-agent share a `-R` takes: an endpoint (a name) or a public port (an address)."""
    if listen_host.startswith(UDP_PREFIX):
        named = bool(listen_host[len(UDP_PREFIX) :])
    else:
        named = not is_public_bind(listen_host)
    return Share.ENDPOINTS_PER_AGENT if named else Share.PUBLIC_PORTS_PER_AGENT


class TunnelListener(asyncssh.SSHListener):
    """What asyncssh keeps for a `-R` forward; closing it removes the tunnel."""

    def __init__(self, hub: Hub, tunnel: Tunnel) -> None:
        super().__init__()
        self.hub = hub
        self.tunnel = tunnel

    def get_port(self) -> int:
        return self.tunnel.port

    def close(self) -> None:
        self.hub.remove_tunnel(self.tunnel)

    async def wait_closed(self) -> None:
        if self.tunnel.server is not None:
            await self.tunnel.server.wait_closed()


_DISCONNECT_CODES = {
    Reason.MAX_AUTH_TRIES: asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
    Reason.LOGIN_GRACE: asyncssh.DISC_BY_APPLICATION,
    Reason.CONNECTION_LIMIT: asyncssh.DISC_TOO_MANY_CONNECTIONS,
}


class AgentServer(asyncssh.SSHServer):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.tcp = TcpTunnels(hub)
        self.conn: Any = None
        self.agent: Agent | None = None
        self.key_blob: bytes | None = None
        self.peer = ""
        self.admitted = False  # by the gate: report it closed
        self.held: Held | None = None  # one of its agent's SSH connections

    def connection_made(self, conn: Any) -> None:
        self.conn = conn
        backlog_of(conn, self.hub.config.write_buffer)  # before anything is written to it
        slim_channels(conn)
        peer = conn.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""
        host = str(peer[0]) if isinstance(peer, tuple) else ""
        ticket = conn.get_extra_info("ticket")  # passed by a relay's supervisor (relay.workers)
        self.admitted = self.hub.gate.connect(self, host, Kind.SSH, self._disconnect, ticket)
        if not self.admitted:
            conn.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.connections.discard(self)
        if self.admitted:
            self.admitted = False
            self.hub.gate.closed(self)
        if self.held is not None:
            held, self.held = self.held, None
            self.hub.shares.release(held)
        if (
            self.agent is not None
            and self.conn is not None
            and self.conn.get_extra_info("username")
        ):
            log.info("agent_disconnected", agent_id=self.agent.agent_id, peer=self.peer)

    def _disconnect(self, decision: Disconnect) -> None:
        code = _DISCONNECT_CODES.get(decision.reason, asyncssh.DISC_BY_APPLICATION)
        self.conn.disconnect(code, decision.message)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: Any) -> bool:
        agent = self.hub.registry.authenticate(username, bytes(key.public_data))
        if agent is None:
            self.hub.gate.auth_failed(self, username)  # logs, and disconnects at the limit
            self.hub.refusals["auth"] += 1
            return False
        self.agent = agent
        self.key_blob = bytes(key.public_data)
        return True

    def auth_completed(self) -> None:
        agent = self.agent
        assert agent is not None
        hub = self.hub
        holds = lambda: hub.holds_tunnels(agent.agent_id)  # noqa: E731
        if hub.gate.authenticated(self, holds_tunnels=holds, agent_id=agent.agent_id):
            return  # told to go: the connection limit's reserve is for tunnel holders
        try:
            self.held = hub.shares.take(Share.SSH_CONNECTIONS_PER_AGENT, agent)
        except Refused as exc:
            self.login_refused(exc)
            return
        hub.connections.add(self)
        log.info("agent_connected", agent_id=agent.agent_id, peer=self.peer)

    def login_refused(self, exc: Refused) -> None:
        """Its agent has all its SSH connections (for a relay of workers, perhaps found later)."""
        agent = self.agent
        assert agent is not None
        self.hub.connections.discard(self)
        self.hub.refuse(None, agent, "login", exc, self._ssh_attempt(agent, "login"))
        self.conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, f"quotarelay: {exc}")

    async def server_requested(self, listen_host: str, listen_port: int) -> Any:
        agent = self.agent
        assert agent is not None
        what = f"-R {listen_host}:{listen_port}"
        share = _tunnel_share(listen_host)
        try:
            await self.hub.shares.ask(share, agent.agent_id)  # a relay of workers counts it
        except Refused as exc:
            self.hub.refuse(
                self.conn, agent, what, exc, self._attempt(agent, listen_host, listen_port)
            )
            return False
        try:
            if listen_host.startswith(UDP_PREFIX):
                udp = udp_for(self.hub)
                tunnel = await udp.register(agent, listen_host, listen_port, self.conn)
            elif is_public_bind(listen_host):
                tunnel = await self.tcp.add_public(agent, listen_host, listen_port, self.conn)
            else:
                if listen_port == 0:
                    raise Refused(
                        f"endpoint {listen_host} needs a port, as in -R {listen_host}:22:..."
                    )
                tunnel = self.tcp.add_endpoint(agent, listen_host, listen_port, self.conn)
        except Refused as exc:
            attempt = self._attempt(agent, listen_host, listen_port)
            self.hub.refuse(self.conn, agent, what, exc, attempt)
            return False
        finally:
            self.hub.shares.settle(share, agent.agent_id)
        return await self._when_leased(tunnel)

    async def _when_leased(self, tunnel: Tunnel) -> Any:
        """The tunnel's listener, once the lease its tunnel primes is in (Hub.lease_ready)."""
        try:
            await self.hub.lease_ready(tunnel.agent)
        except BaseException:  # cancelled with the connection: no listener will close it
            self.hub.remove_tunnel(tunnel)
            raise
        if self.conn.is_closed():
            self.hub.remove_tunnel(tunnel)
            return False
        return TunnelListener(self.hub, tunnel)

    def _attempt(self, agent: Agent, listen_host: str, port: int) -> Attempt:
        """The tunnel a refused `-R` asked for, as its `refused` record names it."""
        if listen_host.startswith(UDP_PREFIX):
            name = listen_host[len(UDP_PREFIX) :].lower()
            kind = UDP_ENDPOINT if name else UDP_PUBLIC
        else:
            public = is_public_bind(listen_host)
            kind, name = (PUBLIC, "") if public else (ENDPOINT, listen_host.lower())
        name = name or "public"
        return Attempt(
            tunnel_id=tunnel_id(agent, kind, name, port),
            kind=kind,
            peer=f"agent:{agent.agent_id}@{self.peer}",
            target=f"{name}:{port}",
        )

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        agent = self.agent
        assert agent is not None
        what = f"open {dest_host}:{dest_port}"
        try:
            held = self.hub.shares.take(Share.CHANNELS_PER_CONNECTION, agent, scope=self)
        except Refused as exc:
            self.hub.refuse(None, agent, what, exc, self._ssh_attempt(agent, what))
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_RESOURCE_SHORTAGE, f"quotarelay: {exc}"
            ) from None
        try:
            session = self._session(agent, dest_host, dest_port, (orig_host, orig_port))
        except Refused as exc:
            self.hub.shares.release(held)
            self.hub.refuse(None, agent, what, exc)
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, f"quotarelay: {exc}"
            ) from None
        chan = self.conn.create_tcp_channel()
        on_closed(chan, functools.partial(self.hub.shares.release, held))  # no task per channel
        return chan, session

    def _session(self, agent: Agent, host: str, port: int, orig: tuple[str, int]) -> Any:
        remote = self.hub.remote
        if remote is not None and remote.wants(agent, host, port):
            return remote.reach(agent, host, port, orig)  # held by another worker
        if host.startswith(UDP_PREFIX):
            return udp_for(self.hub).support_session(agent, host, port, orig)
        tunnel = self.tcp.resolve(agent, host, port)
        return self.tcp.bridge(agent, tunnel, orig)

    def _ssh_attempt(self, agent: Agent, what: str) -> Attempt:
        """A refused login or channel, as its `refused` record names it (no tunnel)."""
        return Attempt(
            tunnel_id="", kind="ssh", peer=f"agent:{agent.agent_id}@{self.peer}", target=what
        )

    def unix_server_requested(self, listen_path: str) -> bool:
        self.hub.refuse(
            self.conn, self.agent, f"-R {listen_path}", "unix socket forwarding is not offered"
        )
        return False
