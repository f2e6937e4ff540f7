"""The tunnel table: endpoints by (account, name, port) and public ports.

Invariants:
- A tunnel id is stable across reconnects: account/agent/kind/name:port.
- An endpoint name lives in its account's namespace; one live owner at a time
  (the same agent reconnecting takes its endpoint over; another agent is refused).
- A public port is in the configured range and held by one tunnel at a time; an
  agent asking for port 0 gets its previous port back when it is still free.
  UDP tunnels (kinds udp_endpoint, udp_public) live in the same tables: a UDP
  endpoint's key and listen host are "udp/<name>", and a public port number is
  held by one tunnel whatever its protocol.
- Fair shares: an agent holds at most `public_ports_per_agent` public ports and
  `endpoints_per_agent` endpoints (TCP and UDP together). A tunnel in the table
  holds one share, given back when it leaves the table; an endpoint taken over
  by its own agent on a reconnect keeps the share it had.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any

from quota.core.shares import Share
from relay.errors import Refused
from relay.hub.shares import FairShares, Held
from relay.registry import Agent

ENDPOINT = "tcp_endpoint"
PUBLIC = "tcp_public"
UDP_ENDPOINT = "udp_endpoint"
UDP_PUBLIC = "udp_public"


def _key_name(kind: str, name: str) -> str:
    """UDP endpoints share the account namespace with TCP ones but not their names."""
    return f"udp/{name}" if kind == UDP_ENDPOINT else name


@dataclass(eq=False, kw_only=True)
class Tunnel:
    tunnel_id: str
    kind: str
    agent: Agent
    name: str  # endpoint name, or "public"
    port: int
    listen_host: str  # as the client agent asked, echoed in forwarded-tcpip opens
    conn: Any  # the owner's asyncssh connection
    server: asyncio.AbstractServer | None = None
    streams: set[Any] = field(default_factory=set)
    opened_ms: int = field(default_factory=lambda: time.time_ns() // 1_000_000)
    held: Held | None = None  # its public port or endpoint share

    @property
    def target(self) -> str:
        return f"{self.name}:{self.port}"


def tunnel_id(agent: Agent, kind: str, name: str, port: int) -> str:
    return f"{agent.account}/{agent.agent_id}/{kind}/{name}:{port}"


class TunnelTable:
    def __init__(self, public_ports: range, shares: FairShares | None = None) -> None:
        self.public_ports = public_ports
        self.shares = shares or FairShares()
        self.endpoints: dict[tuple[str, str, int], Tunnel] = {}
        self.public: dict[int, Tunnel] = {}
        self._last_port: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.endpoints) + len(self.public)

    def all(self) -> list[Tunnel]:
        return [*self.endpoints.values(), *self.public.values()]

    def add_endpoint(
        self, agent: Agent, name: str, port: int, conn: Any, kind: str = ENDPOINT
    ) -> Tunnel:
        key = (agent.account, _key_name(kind, name), port)
        old = self.endpoints.get(key)
        if old is not None and old.agent.agent_id != agent.agent_id:
            raise Refused(
                f"endpoint {name}:{port} is already registered by agent {old.agent.agent_id}"
            )
        if old is not None:  # its own agent again: the share moves to the new tunnel
            held, old.held = old.held, None
        else:
            held = self.shares.take(Share.ENDPOINTS_PER_AGENT, agent)
        tunnel = Tunnel(
            tunnel_id=tunnel_id(agent, kind, name, port),
            kind=kind,
            agent=agent,
            name=name,
            port=port,
            listen_host=_key_name(kind, name),
            conn=conn,
            held=held,
        )
        self.endpoints[key] = tunnel
        return tunnel

    def find_endpoint(
        self, account: str, name: str, port: int, kind: str = ENDPOINT
    ) -> Tunnel | None:
        return self.endpoints.get((account, _key_name(kind, name), port))

    def pick_port(self, agent: Agent, requested: int, avoid: set[int] | None = None) -> int:
        """The public port to open for `agent`: `requested`, or a free one for 0.

        `avoid` lists ports of the range that failed to bind (held outside the relay).
        """
        if requested:
            if requested not in self.public_ports:
                first, last = self.public_ports[0], self.public_ports[-1]
                raise Refused(f"port {requested} is outside this relay's range {first}-{last}")
            if requested in self.public:
                raise Refused(f"port {requested} is already in use")
            return requested
        taken = self.public.keys() | (avoid or set())
        previous = self._last_port.get(agent.agent_id)
        if previous is not None and previous not in taken:
            return previous
        remembered = set(self._last_port.values())
        for port in self.public_ports:
            if port not in taken and port not in remembered:
                return port
        for port in self.public_ports:
            if port not in taken:
                return port
        raise Refused("no free public port left on this relay")

    def add_public(
        self, agent: Agent, port: int, listen_host: str, conn: Any, kind: str = PUBLIC
    ) -> Tunnel:
        held = self.shares.take(Share.PUBLIC_PORTS_PER_AGENT, agent)
        tunnel = Tunnel(
            tunnel_id=tunnel_id(agent, kind, "public", port),
            kind=kind,
            agent=agent,
            name="public",
            port=port,
            listen_host=listen_host,
            conn=conn,
            held=held,
        )
        self.public[port] = tunnel
        self._last_port[agent.agent_id] = port
        return tunnel

    def remove(self, tunnel: Tunnel) -> bool:
        """Take `tunnel` out of the table (giving back its share); False if it was not in."""
        if tunnel.kind in (ENDPOINT, UDP_ENDPOINT):
            key = (tunnel.agent.account, _key_name(tunnel.kind, tunnel.name), tunnel.port)
            if self.endpoints.get(key) is not tunnel:
                return False
            del self.endpoints[key]
        elif self.public.get(tunnel.port) is tunnel:
            del self.public[tunnel.port]
        else:
            return False
        held, tunnel.held = tunnel.held, None
        if held is not None:
            self.shares.release(held)
        return True


def is_address(host: str) -> bool:
    """True for an IP address or a local host name: never an endpoint name."""
    if host.lower() in {"", "localhost", "*", "localhost.localdomain"}:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
