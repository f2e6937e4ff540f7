"""The agent's UDP ends: datagrams to and from frames on an SSH channel.

Client role (`expose --udp`): the relay opens a channel per tunnel and names
flows; each flow gets its own connected UDP socket toward the service, so the
service sees one source port per flow and its replies find their flow.

Support role (`connect --udp`): a local UDP listener, bound once for the
agent's life; each local peer address is a flow with an id chosen here, on one
channel to the relay's endpoint. While the relay is away, datagrams are dropped.

Invariants: a datagram goes whole into one frame, or is dropped (UDP semantics:
never held back, never split); a full channel drops datagrams; bad frames from
the relay are skipped, never raised; flows idle past `idle_ms` are forgotten.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any, cast

import asyncssh

from quota.core.frames import MAX_FLOW_ID, MAX_PAYLOAD, FramedProtocol, encode
from quota.sockets import widen_buffers


def _now_ms() -> int:
    return int(asyncio.get_running_loop().time() * 1000)


class _Framed(FramedProtocol, asyncssh.SSHTCPSession[bytes]):
    """One channel carrying frames, on the agent's side."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = asyncio.Event()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()

    def send(self, flow_id: int, payload: bytes) -> bool:
        chan = self.chan
        if chan is None or self.congested or self.closed.is_set() or len(payload) > MAX_PAYLOAD:
            return False
        chan.write(encode(flow_id, payload))
        return True


# -- client role ---------------------------------------------------------------------


class _ServiceSocket(asyncio.DatagramProtocol):
    """One flow's socket toward the local service."""

    def __init__(self, owner: ExposedChannel, flow_id: int) -> None:
        self.owner = owner
        self.flow_id = flow_id
        self.transport: asyncio.DatagramTransport | None = None
        self.queued: list[bytes] = []
        self.last_ms = _now_ms()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        widen_buffers(transport, 256 * 1024)
        for payload in self.queued:
            self.transport.sendto(payload)
        self.queued.clear()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.last_ms = _now_ms()
        self.owner.send(self.flow_id, data)

    def error_received(self, exc: Exception) -> None:
        """The service is not listening (ICMP): the datagram is lost, as UDP allows."""

    def to_service(self, payload: bytes) -> None:
        self.last_ms = _now_ms()
        if self.transport is None:
            if len(self.queued) < 64:
                self.queued.append(payload)
        elif not self.transport.is_closing():
            self.transport.sendto(payload)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class ExposedChannel(_Framed):
    """The relay's channel for one exposed UDP tunnel: relay flow ids to service sockets."""

    def __init__(self, target: tuple[str, int], idle_ms: int) -> None:
        super().__init__()
        self.target = target
        self.idle_ms = idle_ms
        self.flows: dict[int, _ServiceSocket] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    def on_frame(self, flow_id: int, payload: bytes) -> None:
        sock = self.flows.get(flow_id)
        if sock is None:
            sock = self.flows[flow_id] = _ServiceSocket(self, flow_id)
            task = asyncio.get_running_loop().create_task(
                self._open(sock), name=f"agent-udp-flow-{flow_id}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            self._arm()
        sock.to_service(payload)

    async def _open(self, sock: _ServiceSocket) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_datagram_endpoint(lambda: sock, remote_addr=self.target)
        except OSError:
            self.flows.pop(sock.flow_id, None)

    def _arm(self) -> None:
        if self._sweeper is None and self.flows and not self.closed.is_set():
            delay = min(self.idle_ms / 4000, 1.0)
            self._sweeper = asyncio.get_running_loop().call_later(delay, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        deadline = _now_ms() - self.idle_ms
        for flow_id, sock in list(self.flows.items()):
            if sock.last_ms <= deadline:
                sock.close()
                del self.flows[flow_id]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._sweeper is not None:
            self._sweeper.cancel()
        for sock in self.flows.values():
            sock.close()
        self.flows.clear()
        for task in self._tasks:
            task.cancel()


def exposed_factory(target: tuple[str, int], idle_ms: int) -> Callable[[str, int], ExposedChannel]:
    """The session factory asyncssh calls for each channel the relay opens to us."""

    def factory(orig_host: str, orig_port: int) -> ExposedChannel:
        return ExposedChannel(target, idle_ms)

    return factory


# -- support role ----------------------------------------------------------------------


class LocalListener(asyncio.DatagramProtocol):
    """`connect --udp`: the local socket; its peers are flows on the current channel."""

    def __init__(self, idle_ms: int) -> None:
        self.idle_ms = idle_ms
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.channel: SupportChannel | None = None
        self.by_addr: dict[Any, tuple[int, int]] = {}  # addr -> (flow id, last ms)
        self.by_id: dict[int, Any] = {}
        self._ids = itertools.count(1)
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.port = int(transport.get_extra_info("sockname")[1])
        widen_buffers(transport)

    def attach(self, channel: SupportChannel) -> None:
        """A new session: flow ids start afresh on the new channel."""
        self.channel = channel
        self.by_addr.clear()
        self.by_id.clear()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        now = _now_ms()
        entry = self.by_addr.get(addr)
        if entry is None or now - entry[1] > self.idle_ms:
            if entry is not None:
                self.by_id.pop(entry[0], None)
            flow_id = next(self._ids) % MAX_FLOW_ID or next(self._ids)
            self.by_id[flow_id] = addr
            entry = (flow_id, now)
        self.by_addr[addr] = (entry[0], now)
        channel = self.channel
        if channel is None or not channel.send(entry[0], data):
            self.dropped += 1

    def error_received(self, exc: Exception) -> None:
        """A local peer went away (ICMP): nothing to do."""

    def reply(self, flow_id: int, payload: bytes) -> None:
        addr = self.by_id.get(flow_id)
        if addr is not None and self.transport is not None:
            self.transport.sendto(payload, addr)


class SupportChannel(_Framed):
    """Our channel to a UDP endpoint: replies go to the local peer of their flow.

    The relay closes it when the endpoint goes (its agent left or was replaced):
    `on_lost` then ends the session, and the reconnect loop opens it again.
    """

    def __init__(self, listener: LocalListener, on_lost: Callable[[], None]) -> None:
        super().__init__()
        self.listener = listener
        self.on_lost = on_lost

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.listener.channel is self:
            self.listener.channel = None
        self.on_lost()

    def on_frame(self, flow_id: int, payload: bytes) -> None:
        self.listener.reply(flow_id, payload)
