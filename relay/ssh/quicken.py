"""asyncssh's per-packet work trimmed for the connections and channels that relay streams.

Invariants:
- Every change is a per-object override on one connection or channel (never a
  class patch), skipped when the asyncssh names it relies on are missing; the
  bytes on the wire and their order are what asyncssh would send, minus work
  that has no effect (log formatting nobody reads, an Event nobody awaits),
  with one exception: a paused channel's window goes back to the peer only once
  what it buffered is delivered (`_AdjustWhenDrained`), so it buffers at most one
  window.
- `quicken` installs them once per connection and once per channel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import asyncssh

from relay.ssh.fastrecv import install as install_receiver
from relay.ssh.slimchan import SlimTCPChannel, lazy_closed


class _JoinIgnore:
    """asyncssh's `_send` and `send_packet` for one connection: MSG_IGNORE goes out with its packet.

    asyncssh sends an empty MSG_IGNORE before every packet once encryption is on (a
    CBC-era countermeasure), each in its own transport write: two syscalls and two
    TCP segments per 32 KiB of payload. Inside a `send_packet` call, a tiny packet
    is held until the next one and both go out in one `writelines` (one writev on
    uvloop, no copy); whatever is still held when the outermost call returns is
    written then. Nothing is held past a `send_packet` call; the bytes on the wire
    and their order are unchanged.
    """

    __slots__ = ("conn", "depth", "held", "orig")

    SMALL = 128  # an encrypted empty MSG_IGNORE is 36 to 64 bytes

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.orig = conn.send_packet
        self.held = b""
        self.depth = 0

    def send_packet(self, pkttype: int, *args: bytes, handler: Any = None) -> None:
        self.depth += 1
        try:
            self.orig(pkttype, *args, handler=handler)
        finally:
            self.depth -= 1
            if not self.depth and self.held:
                self(b"")

    def __call__(self, data: bytes) -> None:
        transport = self.conn._transport
        held = self.held
        if not transport:
            self.held = b""
        elif held:
            self.held = b""
            with contextlib.suppress(ConnectionError):  # as asyncssh's own _send does
                transport.writelines((held, data) if data else (held,))
        elif self.depth and len(data) <= self.SMALL:
            self.held = data
        else:
            with contextlib.suppress(ConnectionError):
                transport.write(data)


class _FeedInSlices:
    """asyncssh's `data_received` for one connection, fed at most `SLICE` bytes at a time.

    asyncssh appends each read to a bytes buffer and, per packet, slices the
    rest of that buffer off: a 256 KiB read of 32 KiB packets copies the buffer
    about nine times over. Fed in memoryview slices of about two packets, it
    copies each byte about twice. The bytes asyncssh sees are the same.
    """

    __slots__ = ("orig",)

    SLICE = 64 * 1024

    def __init__(self, orig: Callable[..., None]) -> None:
        self.orig = orig

    def __call__(self, data: bytes, datatype: object = None) -> None:
        n, step = len(data), self.SLICE
        if n <= step:
            self.orig(data)
            return
        view = memoryview(data)
        for i in range(0, n, step):
            self.orig(view[i : i + step])


def _no_log(*args: object) -> None:
    pass


class _AdjustWhenDrained:
    """A channel's `_deliver_data`: no window adjust while more buffered data waits behind it.

    asyncssh gives the peer its whole window back on any delivery once half of it
    is used, even the first of many items buffered while the channel was paused.
    A leg that resumes, takes one packet and pauses again (its socket's buffer is
    full again) thus let the peer send a fresh window each time: a stalled
    reader's owner filled a worker with 1,159 buffered packets (37 MB, each
    pinning its 32 KiB packet buffer) against a 2 MiB window. Here the adjust
    waits until the buffer is empty, so the channel buffers at most one window.
    """

    __slots__ = ("chan", "deliver")

    def __init__(self, chan: Any) -> None:
        self.chan = chan
        self.deliver = chan._deliver_data

    def __call__(self, data: Any, datatype: Any) -> None:
        chan = self.chan
        if not chan._recv_buf:
            self.deliver(data, datatype)
            return
        window = chan._recv_window
        chan._recv_window = chan._init_recv_window  # asyncssh adjusts nothing now
        try:
            self.deliver(data, datatype)
        finally:
            chan._recv_window = window


def quicken(chan: Any, wants_view: Callable[[Any], bool]) -> None:
    """Trim asyncssh's per-packet work for a relayed channel and its connection.

    Writes each MSG_IGNORE with the packet that follows it (`_JoinIgnore`), feeds
    reads in slices (`_FeedInSlices`) behind the AES-GCM receive path
    (relay.ssh.fastrecv), makes the channel's close event only when waited for
    (relay.ssh.slimchan.LazyClosed) and, while asyncssh's packet logging is off
    (debug level below 3), skips the log calls that format a message for every
    packet only to drop it. All are per-object overrides of asyncssh internals,
    skipped if those names change; measured by `make bench` (bench/RESULTS.md,
    summed up in the README's Benchmarks section).
    """
    quiet = getattr(asyncssh.logger, "_debug_level", 3) < 3
    if not isinstance(chan, SlimTCPChannel):  # a slim channel does both in its class
        lazy_closed(chan)
        names = ("_recv_buf", "_recv_window", "_init_recv_window", "_deliver_data")
        if all(hasattr(chan, n) for n in names) and not isinstance(
            chan.__dict__.get("_deliver_data"), _AdjustWhenDrained
        ):
            chan._deliver_data = _AdjustWhenDrained(chan)
    conn = chan.get_connection()
    if quiet and not isinstance(chan, SlimTCPChannel) and hasattr(chan, "log_sent_packet"):
        chan.log_sent_packet = chan.log_received_packet = _no_log  # a slim channel's class does it
    if conn is None or not hasattr(conn, "_send") or not hasattr(conn, "_transport"):
        return
    if not isinstance(conn.__dict__.get("_send"), _JoinIgnore):
        joiner = _JoinIgnore(conn)
        conn._send, conn.send_packet = joiner, joiner.send_packet
        conn.data_received = _FeedInSlices(conn.data_received)
        install_receiver(conn, wants_view)
        if conn._transport:  # uvloop keeps the protocol's bound data_received: renew it
            conn._transport.set_protocol(conn)
        if quiet and hasattr(conn, "log_sent_packet"):
            conn.log_sent_packet = conn.log_received_packet = _no_log
