"""asyncssh's TCP channel with the same behaviour and a smaller idle footprint.

asyncssh's channel sets more than 30 instance attributes, so CPython gives every
channel a full dict (1.6 KB), and each one also carries four empty lists, an
empty environment dict, a dict of extra info, a close Event (some 760 bytes with
its deque) and a child logger (about 230 bytes) that an idle relayed stream never
uses. `SlimTCPChannel` keeps those attributes and the four extra-info values of a
TCP channel in slots, makes the lists, the environment and the close event only
when first used, and its logger only when a message passes the log level. The
bytes on the wire, the order of callbacks and every log line are what asyncssh's
own channel gives. Measured by tests/relay/test_idle_memory.py and `python -m
bench --only memory` (docs/bench.md).

Invariants:
- Every attribute asyncssh 2.24.1's SSHChannel, SSHForwardChannel and
  SSHTCPChannel set is a slot or a lazy property; an attribute a later asyncssh
  adds lands in the instance dict and still works. `slim_channels` installs the
  class only on the asyncssh versions checked (relay.ssh.fastsend.TESTED).
- A lazy container is made on first read and dropped when set empty, so it is
  the same object from its first read until asyncssh replaces it.
- A close callback (`on_closed`) runs once, when asyncssh marks the channel
  closed: a stream's share is given back without a task waiting per channel.
- A paused channel gives the peer its window back only once what it buffered is
  delivered (relay.ssh.quicken's `_AdjustWhenDrained`, here in the class, so no
  per-channel override makes an instance dict).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

import asyncssh
from asyncssh.connection import _DEFAULT_MAX_PKTSIZE, _DEFAULT_WINDOW
from asyncssh.logging import SSHLogger

from relay.ssh.fastsend import TESTED

ENABLED = asyncssh.__version__ in TESTED


class LazyClosed:
    """A channel's close event, an `asyncio.Event` only once someone waits for it.

    asyncssh gives every channel an Event (its deque alone is some 700 bytes) that
    only `wait_closed` awaits; a public-port stream's channel is never waited for.
    `then` runs once, when the channel is marked closed.
    """

    __slots__ = ("done", "event", "then")

    def __init__(self, event: asyncio.Event | None = None) -> None:
        self.done = False
        self.event = event  # kept when someone already waits on it
        self.then: Callable[[], None] | None = None

    def set(self) -> None:
        if self.done:
            return
        self.done = True
        if self.event is not None:
            self.event.set()
        then, self.then = self.then, None
        if then is not None:
            then()

    def is_set(self) -> bool:
        return self.done

    async def wait(self) -> bool:
        if not self.done:
            if self.event is None:
                self.event = asyncio.Event()
            await self.event.wait()
        return True


def lazy_closed(chan: Any) -> LazyClosed | None:
    """`chan`'s close event as a LazyClosed (installed now if need be); None if it closed."""
    closed = chan._close_event  # a SlimTCPChannel makes its LazyClosed here
    if isinstance(closed, LazyClosed):
        return closed
    if type(closed) is not asyncio.Event or closed.is_set():
        return None
    # a waiter may already be parked on the Event (the front's share release was)
    lazy = LazyClosed(closed if getattr(closed, "_waiters", True) else None)
    chan._close_event = lazy
    return lazy


def on_closed(chan: Any, callback: Callable[[], None]) -> None:
    """Call `callback` once `chan` is closed (at once if it already is)."""
    closed = lazy_closed(chan)
    if closed is None or closed.done:
        callback()
        return
    assert closed.then is None, "one close callback per channel"
    closed.then = callback


class _ChannelLog:
    """What a channel's `logger` gives until its SSHLogger exists: made at the first message.

    One is made per `logger` access and dropped after the call: a quiet channel keeps none.
    """

    __slots__ = ("chan", "parent")

    def __init__(self, chan: SlimTCPChannel) -> None:
        self.chan = chan
        self.parent: SSHLogger = chan._log_parent

    def _real(self) -> SSHLogger:
        chan = self.chan
        if chan._logger is None:
            chan._logger = self.parent.get_child(context=f"chan={chan._recv_chan}")
        return chan._logger

    def debug1(self, msg: str, *args: Any, **kwargs: Any) -> None:
        if self.parent.isEnabledFor(logging.DEBUG):
            self._real().debug1(msg, *args, **kwargs)

    def debug2(self, msg: str, *args: Any, **kwargs: Any) -> None:
        if SSHLogger._debug_level >= 2 and self.parent.isEnabledFor(logging.DEBUG):
            self._real().debug2(msg, *args, **kwargs)

    def packet(self, pktid: int | None, packet: bytes, msg: str, *args: Any, **kw: Any) -> None:
        if SSHLogger._debug_level >= 3 and self.parent.isEnabledFor(logging.DEBUG):
            self._real().packet(pktid, packet, msg, *args, **kw)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        if self.parent.isEnabledFor(logging.INFO):
            self._real().info(msg, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real(), name)


# what asyncssh 2.24.1's channel __init__ and methods set on a TCP channel
_SLOTS = (
    "_log_parent",
    "_command",
    "_conn",
    "_decoder",
    "_encoder",
    "_encoding",
    "_errors",
    "_init_recv_window",
    "_logger",
    "_loop",
    "_open_waiter",
    "_recv_chan",
    "_recv_paused",
    "_recv_pktsize",
    "_recv_state",
    "_recv_window",
    "_send_buf_len",
    "_send_chan",
    "_send_high_water",
    "_send_low_water",
    "_send_paused",
    "_send_pktsize",
    "_send_state",
    "_send_window",
    "_session",
    "_str_env",
    "_subsystem",
)
# containers asyncssh makes empty for every channel: made on first use instead
_LAZY: dict[str, Callable[[], Any]] = {
    "_send_buf": list,
    "_recv_buf": list,
    "_request_queue": list,
    "_request_waiters": list,
    "_env": dict,
}


# extra info every TCP channel carries, each in a slot rather than a dict of its own
_EXTRA = {
    name: f"_x_{name}" for name in ("connection", "peername", "local_peername", "remote_peername")
}
_UNSET = object()


def _lazy(name: str, factory: Callable[[], Any]) -> property:
    slot = f"_slim{name}"

    def get(self: Any) -> Any:
        value = getattr(self, slot)
        if value is None:
            value = factory()
            setattr(self, slot, value)
        return value

    def put(self: Any, value: Any) -> None:
        setattr(self, slot, value if value else None)

    return property(get, put, doc=f"asyncssh's {name}, made on first use")


class SlimTCPChannel(asyncssh.SSHTCPChannel[bytes]):
    """asyncssh's TCP channel with slots, lazy containers, close event and logger."""

    __slots__ = (
        *_SLOTS,
        *(f"_slim{name}" for name in _LAZY),
        *_EXTRA.values(),
        "_x_more",
        "_slim_closed",
    )

    _slim_recv_buf: list[Any] | None  # asyncssh's _recv_buf behind its lazy property
    _x_more: dict[str, Any] | None  # extra info other than the four of _EXTRA
    _logger: SSHLogger | None  # type: ignore[assignment]  # made at the first message logged

    def __init__(
        self,
        conn: Any,
        loop: asyncio.AbstractEventLoop,
        encoding: str | None,
        errors: str,
        window: int,
        max_pktsize: int,
    ) -> None:
        for name in _LAZY:
            setattr(self, f"_slim{name}", None)
        for slot in _EXTRA.values():
            setattr(self, slot, _UNSET)
        self._x_more = None
        self._log_parent = conn.logger
        self._slim_closed: LazyClosed | None = None
        super().__init__(conn, loop, encoding, errors, window, max_pktsize)
        self._logger = None

    @property  # type: ignore[override]
    def _close_event(self) -> LazyClosed:
        """asyncssh's close Event, as a LazyClosed made when first asked for."""
        if self._slim_closed is None:
            self._slim_closed = LazyClosed()
        return self._slim_closed

    @_close_event.setter
    def _close_event(self, value: Any) -> None:
        if not isinstance(value, LazyClosed):  # asyncssh's own, in __init__: none waits yet
            value = None
        self._slim_closed = value

    @property
    def logger(self) -> Any:
        return self._logger if self._logger is not None else _ChannelLog(self)

    # asyncssh keeps extra info in a dict `_extra`, which only these two and __init__ touch
    @property
    def _extra(self) -> dict[str, Any]:
        named = {name: getattr(self, slot) for name, slot in _EXTRA.items()}
        return {k: v for k, v in named.items() if v is not _UNSET} | (self._x_more or {})

    @_extra.setter
    def _extra(self, value: dict[str, Any]) -> None:
        for slot in _EXTRA.values():
            setattr(self, slot, _UNSET)
        self._x_more = None
        self.set_extra_info(**value)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        slot = _EXTRA.get(name)
        value = getattr(self, slot) if slot is not None else _UNSET
        if value is _UNSET and self._x_more is not None:
            value = self._x_more.get(name, _UNSET)
        if value is not _UNSET:
            return value
        return self._conn.get_extra_info(name, default) if self._conn else default

    def set_extra_info(self, **kwargs: Any) -> None:
        for name, value in kwargs.items():
            slot = _EXTRA.get(name)
            if slot is not None:
                setattr(self, slot, value)
            else:
                if self._x_more is None:
                    self._x_more = {}
                self._x_more[name] = value

    def _deliver_data(self, data: Any, datatype: Any) -> None:
        # relay.ssh.quicken._AdjustWhenDrained, in the class: while more buffered data
        # waits behind this item, the peer gets no window back (at most one window held)
        if not self._slim_recv_buf:
            super()._deliver_data(data, datatype)
            return
        window = self._recv_window
        self._recv_window = self._init_recv_window  # asyncssh adjusts nothing now
        try:
            super()._deliver_data(data, datatype)
        finally:
            self._recv_window = window

    def _flush_recv_buf(self, exc: Exception | None = None) -> None:
        super()._flush_recv_buf(exc)
        if not self._slim_recv_buf:  # read empty (each resume_reading reads it): keep none
            self._slim_recv_buf = None

    # asyncssh formats a line per packet before its logger drops it below debug level 3
    def log_sent_packet(self, pkttype: int, pktid: int | None, packet: Any, note: str = "") -> None:
        if SSHLogger._debug_level >= 3:
            super().log_sent_packet(pkttype, pktid, packet, note)

    def log_received_packet(
        self, pkttype: int, pktid: int | None, packet: Any, note: str = ""
    ) -> None:
        if SSHLogger._debug_level >= 3:
            super().log_received_packet(pkttype, pktid, packet, note)


for _name, _factory in _LAZY.items():
    setattr(SlimTCPChannel, _name, _lazy(_name, _factory))


def _create_tcp_channel(
    conn: Any,
    encoding: str | None = None,
    errors: str = "strict",
    window: int = _DEFAULT_WINDOW,
    max_pktsize: int = _DEFAULT_MAX_PKTSIZE,
) -> SlimTCPChannel:
    """asyncssh's `create_tcp_channel` (same defaults), making a SlimTCPChannel."""
    conn._update_recv_pktlen(max_pktsize)
    return SlimTCPChannel(conn, conn._loop, encoding, errors, window, max_pktsize)


def slim_channels(conn: Any) -> None:
    """Make every TCP channel of asyncssh connection `conn` a SlimTCPChannel (checked versions)."""
    if ENABLED and hasattr(conn, "_update_recv_pktlen"):
        conn.create_tcp_channel = functools.partial(_create_tcp_channel, conn)
