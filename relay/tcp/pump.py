"""Stream pumps: two legs (a TCP socket or an SSH channel each) joined by a meter.

Invariants:
- A leg forwards only bytes its meter allows: out of `meter.allowance` on the hot
  path (two integer operations), else through `Bucket.take`, which splits a chunk
  at the grant. The remainder is held (at most one chunk) and the stream pauses.
- A leg reads only while its pause set is empty. Flow control (the SSH channel
  toward the peer has no window), a full write buffer (the peer's socket, or its
  SSH connection's, above the `write_buffer` high-water mark: relay.ssh.backlog)
  and quota pauses are separate reasons: none undoes another. So whatever window
  a peer advertises, what a leg charged but the kernel has not taken is bounded.
- Held bytes are written before reading resumes, because resuming may deliver
  buffered data inside the call and newer bytes must not overtake held ones.
- Bytes that arrive before the other leg is connected wait in `pending`
  (uvloop may deliver data even after `pause_reading()` in `connection_made`).
- EOF is forwarded after held bytes; a stream closes once both directions ended
  or either leg is lost.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, Protocol, cast

import asyncssh

from quota.core.bucket import Meter
from quota.core.stream import PauseReason, pause_bit, reasons_of
from relay.ssh.backlog import NEVER_FULL, backlog_of
from relay.ssh.fastsend import FastSender, fast_sender
from relay.ssh.quicken import quicken


class LegStream(Protocol):
    """What a leg tells its stream (relay.tcp.stream.TcpPair); each becomes a core event."""

    def leg_connected(self, leg: Leg) -> None: ...
    def leg_lost(self, leg: Leg, exc: Exception | None) -> None: ...
    def quota_wait(self) -> None: ...
    def quota_check(self) -> None: ...
    def after_take(self, wakes: tuple[Meter, ...]) -> None: ...
    def maybe_finish(self) -> None: ...
    def flow(self, leg: Leg, paused: bool) -> None: ...
    def buffer(self, leg: Leg, full: bool) -> None: ...
    @property
    def write_buffer(self) -> int: ...


class Leg:
    """What both kinds of leg share: metering, holding, pausing, EOF.

    Every leg class is slotted (an idle stream costs two legs): no per-leg dict,
    and `pending` is a list only while bytes wait for the other leg.
    """

    __slots__ = (
        "connected",
        "eof_in",
        "eof_sent",
        "held",
        "lost",
        "meter",
        "name",
        "paused_by",
        "peer",
        "pending",
        "stream",
    )

    stream: LegStream
    peer: Leg | None
    meter: Meter | None
    name: str

    def _init_leg(self, stream: LegStream, name: str) -> None:
        self.stream = stream
        self.name = name
        self.peer = None
        self.meter = None
        self.paused_by = 0  # the pause reasons, as bits (quota.core.stream.pause_bit)
        self.held = b""
        self.pending: list[bytes] | None = None  # bytes read before the peer was attached
        self.eof_in = False  # EOF read from this leg
        self.eof_sent = False  # EOF forwarded to the peer
        self.connected = False
        self.lost = False

    # -- transport operations, per kind -------------------------------------------

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def write_eof(self) -> None:
        raise NotImplementedError

    def _pause_transport(self) -> None:
        raise NotImplementedError

    def _resume_transport(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- pausing ----------------------------------------------------------------

    @property
    def reasons(self) -> frozenset[PauseReason]:
        return reasons_of(self.paused_by)

    def pause(self, reason: PauseReason) -> None:
        # Pause the transport even when a reason was already set: uvloop starts reading
        # after connection_made even if pause_reading() was called in it.
        self.paused_by |= pause_bit(reason)
        if self.connected and not self.lost:
            self._pause_transport()

    def unpause(self, reason: PauseReason) -> None:
        bit = pause_bit(reason)
        if not self.paused_by & bit:
            return
        self.paused_by &= ~bit
        if not self.paused_by and self.connected and not self.lost:
            self._resume_transport()

    # -- the byte path ------------------------------------------------------------

    def on_data(self, data: bytes) -> None:
        peer = self.peer
        if peer is None:
            if self.pending is None:
                self.pending = []
            self.pending.append(data)
            self._pause_transport()  # uvloop reads despite pause_reading() in connection_made
            return
        meter = self.meter
        if meter is None:  # metering off
            peer.write(data)
            return
        n = len(data)
        if not self.held and n <= meter.allowance:
            meter.allowance -= n
            meter.passed += n
            peer.write(data)
            return
        self._slow(meter, peer, data)

    def _slow(self, meter: Meter, peer: Leg, data: bytes) -> None:
        take = meter.bucket.take(meter, len(data))
        if take.passed:
            peer.write(data if take.passed == len(data) else data[: take.passed])
        if take.passed < len(data):
            self.held += data[take.passed :]
            self.stream.quota_wait()
        self.stream.after_take(take.wakes)

    def on_wake(self) -> None:
        """The bucket handed this leg bytes for its held chunk: flush what fits."""
        meter, peer = self.meter, self.peer
        if meter is None or peer is None or not self.held:
            return
        k = meter.flush(len(self.held))
        if k:
            chunk, self.held = self.held[:k], self.held[k:]
            peer.write(chunk)
        if not self.held:
            if self.eof_in:
                self._forward_eof()
            self.stream.quota_check()

    def on_eof(self) -> None:
        self.eof_in = True
        if not self.held and self.peer is not None and not self.pending:
            self._forward_eof()

    def _forward_eof(self) -> None:
        peer = self.peer
        if peer is None or self.eof_sent:
            return
        self.eof_sent = True
        if not peer.lost:
            peer.write_eof()
        self.stream.maybe_finish()

    def attach_peer(self, peer: Leg) -> None:
        """The other leg is connected: drain what arrived early, then read."""
        self.peer = peer
        pending, self.pending = self.pending, None
        for data in pending or ():
            self.on_data(data)
        if self.eof_in and not self.held:
            self._forward_eof()
        self.unpause(PauseReason.CONNECTING)

    # -- callbacks both transports make (Leg comes first in each subclass's MRO) ----

    def eof_received(self) -> bool:
        self.on_eof()
        return True  # keep the other direction open (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.stream.leg_lost(self, exc)

    def pause_writing(self) -> None:
        self.on_pause_writing()

    def resume_writing(self) -> None:
        self.on_resume_writing()

    # -- flow control from the transport ------------------------------------------

    def on_pause_writing(self) -> None:
        self.stream.flow(self, paused=True)

    def on_resume_writing(self) -> None:
        self.stream.flow(self, paused=False)


class TcpLeg(Leg, asyncio.Protocol):
    """A TCP socket: a public-port client, or a plain target."""

    __slots__ = ("transport",)

    # Accepted from a listener that set SO_KEEPALIVE and TCP_NODELAY (`keep_alive`), which
    # the socket inherits: asking for it here would keep a socket object per connection.
    options_from_listener = False

    transport: asyncio.Transport | None

    def __init__(self, stream: LegStream, name: str) -> None:
        self._init_leg(stream, name)
        self.transport = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.connected = True
        if not self.options_from_listener:
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family != socket.AF_UNIX:  # a worker's pair: no TCP
                keep_alive(sock)
        self.transport.set_write_buffer_limits(high=self.stream.write_buffer)
        if self.paused_by:
            self.transport.pause_reading()
        self.stream.leg_connected(self)

    def data_received(self, data: bytes) -> None:
        self.on_data(data)

    def on_pause_writing(self) -> None:
        self.stream.buffer(self, full=True)

    def on_resume_writing(self) -> None:
        self.stream.buffer(self, full=False)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    def write_eof(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing() and t.can_write_eof():
            t.write_eof()

    def _pause_transport(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def _resume_transport(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class ChannelLeg(Leg, asyncssh.SSHTCPSession[bytes]):
    """An SSH channel: a support agent's direct-tcpip, or a client's forwarded-tcpip."""

    __slots__ = ("backed_up", "backlog", "chan", "fast")

    def __init__(self, stream: LegStream, name: str) -> None:
        self._init_leg(stream, name)
        self.chan: Any = None
        self.backlog = NEVER_FULL
        self.backed_up = False  # held by `backlog` until its transport drains
        self.fast: FastSender | None = None  # AES-GCM packets built in one step

    def connection_made(self, chan: Any) -> None:
        self.chan = chan
        self.connected = True
        quicken(chan, _takes_views)
        self.fast = fast_sender(chan.get_connection())
        self.backlog = backlog_of(chan.get_connection(), self.stream.write_buffer)
        if self.paused_by:
            chan.pause_reading()
        self.stream.leg_connected(self)

    def data_received(self, data: bytes, datatype: Any) -> None:
        self.on_data(data)

    def write(self, data: bytes) -> None:
        if self.chan is not None and not self.lost:
            if self.fast is not None:
                self.fast.send(self.chan, data)
            else:
                self.chan.write(data)
            if self.backlog.full and not self.backed_up:
                self.backlog.hold(self)

    def write_eof(self) -> None:
        if self.chan is not None and not self.chan.is_closing():
            self.chan.write_eof()

    def on_backlog(self, full: bool) -> None:
        """The SSH connection under this channel went above high water, or drained."""
        self.stream.buffer(self, full)

    def connection_lost(self, exc: Exception | None) -> None:
        self.backlog.forget(self)
        super().connection_lost(exc)

    def _pause_transport(self) -> None:
        if self.chan is not None:
            self.chan.pause_reading()

    def _resume_transport(self) -> None:
        if self.chan is not None:
            self.chan.resume_reading()

    def close(self) -> None:
        if self.chan is not None:
            self.chan.close()


LegFactory = Callable[[], Leg]


def keep_alive(sock: Any) -> None:
    """TCP keepalives and no Nagle delay on `sock` (or on every socket a listener accepts)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _takes_views(chan: Any) -> bool:
    """A relayed channel's leg forwards memoryviews as they are (no copy into bytes)."""
    return isinstance(chan._session, ChannelLeg)
