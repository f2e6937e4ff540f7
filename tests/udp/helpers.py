"""Real parts for UDP tests: UDP echo and sink services, UDP peers.

Everything binds 127.0.0.1; conditions are polled with a deadline.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, cast

from quota.sockets import widen_buffers


class UdpService(asyncio.DatagramProtocol):
    """A UDP service on 127.0.0.1: echoes (or only counts) each datagram."""

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self.transport: asyncio.DatagramTransport | None = None
        self.received = 0
        self.count = 0
        self.peers: set[Any] = set()
        self.port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        widen_buffers(transport)
        self.port = self.transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received += len(data)
        self.count += 1
        self.peers.add(addr)
        if self.echo and self.transport is not None:
            self.transport.sendto(data, addr)

    async def __aenter__(self) -> UdpService:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.transport is not None:
            self.transport.close()


class Peer(asyncio.DatagramProtocol):
    """A UDP client socket toward 127.0.0.1:port; keeps what comes back."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.got: list[bytes] = []
        self.arrived = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append(data)
        self.arrived.set()

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def peer(port: int) -> Peer:
    loop = asyncio.get_running_loop()
    _, p = await loop.create_datagram_endpoint(Peer, remote_addr=("127.0.0.1", port))
    return p


def datagram(seq: int, size: int) -> bytes:
    """A datagram that names its sequence number and is random after it."""
    assert size >= 4
    return seq.to_bytes(4, "big") + random.Random(seq).randbytes(size - 4)


async def echo_round_trips(p: Peer, payloads: list[bytes], window: int = 16) -> None:
    """Send `payloads` with at most `window` unanswered; every echo must match what was sent."""
    base = len(p.got)
    sent = checked = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while checked < len(payloads):
        while sent < len(payloads) and sent - checked < window:
            p.send(payloads[sent])
            sent += 1
        while base + checked < len(p.got):
            got, want = p.got[base + checked], payloads[checked]
            assert got == want, f"datagram {checked} differs: {got[:4].hex()} != {want[:4].hex()}"
            checked += 1
        if sent < len(payloads) and sent - checked < window:
            continue
        if checked < len(payloads):
            remaining = deadline - loop.time()
            assert remaining > 0, f"echo stalled at {checked}/{len(payloads)}"
            p.arrived.clear()
            await asyncio.wait_for(p.arrived.wait(), remaining)
    assert len(p.got) == base + len(payloads), "more datagrams came back than were sent"
