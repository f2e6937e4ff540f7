"""A public port's connections keep TCP keepalives and no Nagle delay, set once on its listener."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from relay.config import load_config
from relay.hub.hub import Hub
from relay.registry import Agent, Registry, Role
from relay.tcp.pump import TcpLeg
from relay.tcp.tunnels import TcpTunnels
from tests.rigs.relay import free_port_range
from tests.rigs.waits import poll

OWNER = Agent(agent_id="owner", account="acme", role=Role.CLIENT, keys=frozenset(), active=True)


class NeverAnswers:
    """An owner's SSH connection whose channel opens never complete."""

    async def create_connection(self, *args: Any, **kwargs: Any) -> None:
        await asyncio.Event().wait()


async def test_accepted_public_sockets_inherit_keepalive_and_nodelay() -> None:
    """The relay's side of a public-port connection has SO_KEEPALIVE and TCP_NODELAY on."""
    first, last = free_port_range(10)
    hub = Hub(
        load_config(None, {"relay.public_ports": f"{first}-{last}"}, env={}),
        Registry(None),
        None,
    )
    tunnels = TcpTunnels(hub)
    legs: list[TcpLeg] = []
    make = tunnels._public_leg

    def recording(tunnel: Any) -> TcpLeg:
        legs.append(make(tunnel))
        return legs[-1]

    tunnels._public_leg = recording  # type: ignore[method-assign]
    tunnel = await tunnels.add_public(OWNER, "", 0, NeverAnswers())
    _reader, writer = await asyncio.open_connection("127.0.0.1", tunnel.port)
    try:
        await poll(lambda: bool(legs) and legs[0].transport is not None, "the public leg")
        transport = legs[0].transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        writer.close()
        for leg in legs:
            leg.close()
        hub.close_all("relay_shutdown")
        await hub.drain_tasks()
        await poll(lambda: all(leg.lost for leg in legs), "the relay's sockets closed")
