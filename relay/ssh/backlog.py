"""The write buffer of an SSH connection's socket, and the legs that wrote to it while full.

asyncssh passes a channel's data to its connection's transport as soon as the
peer's window allows; the connection ignores the transport's `pause_writing`,
so a peer that advertises a huge window and stops reading its socket lets the
transport's buffer grow without end. A `ConnBacklog` takes those callbacks.

Invariants:
- One per SSH connection, installed when the connection is made (relay.ssh.front),
  before anything was written to it: a transport that had already paused (and
  called asyncssh's no-op `pause_writing`) would never call ours. The
  transport's high-water mark is set to the relay's `write_buffer`.
- `full` is True from the transport's `pause_writing` to its `resume_writing`.
  The byte path only reads it after a write (one attribute test per chunk); a
  leg that wrote while it is True is held (`on_backlog(True)`, which pauses its
  peer's reading) and released at `resume_writing`, once each. A leg whose
  channel closes is forgotten at once, so a connection that stays full holds
  no reference to the streams that ended meanwhile.
- So per stream direction the connection's buffer holds at most the high-water
  mark plus the chunks written before their writers paused (one each).
"""

from __future__ import annotations

from typing import Any, Protocol

DEFAULT_WRITE_BUFFER = 256 * 1024  # relay.write_buffer: the high-water mark of every socket
_ATTR = "_quotarelay_backlog"


class Writer(Protocol):
    """A leg writing to a channel of the connection (relay.tcp.pump.ChannelLeg)."""

    backed_up: bool
    lost: bool

    def on_backlog(self, full: bool) -> None: ...


class ConnBacklog:
    """Whether one SSH connection's transport is above high water, and who wrote meanwhile."""

    __slots__ = ("full", "held")

    def __init__(self) -> None:
        self.full = False
        self.held: dict[Writer, None] = {}  # in the order they wrote

    def hold(self, leg: Writer) -> None:
        """`leg` wrote while the buffer is full: its peer stops reading until it drains."""
        leg.backed_up = True
        self.held[leg] = None
        leg.on_backlog(True)

    def forget(self, leg: Writer) -> None:
        """`leg`'s channel closed: nothing to release it for."""
        self.held.pop(leg, None)

    def pause_writing(self) -> None:
        self.full = True

    def resume_writing(self) -> None:
        self.full = False
        held, self.held = self.held, {}
        for leg in held:
            leg.backed_up = False
            if not leg.lost:
                leg.on_backlog(False)


NEVER_FULL = ConnBacklog()  # a leg's backlog until its channel is connected; never installed


def backlog_of(conn: Any, high: int) -> ConnBacklog:
    """The backlog of asyncssh connection `conn`, installed on first use with high-water `high`."""
    backlog = conn.__dict__.get(_ATTR)
    if isinstance(backlog, ConnBacklog):
        return backlog
    backlog = ConnBacklog()
    conn.__dict__[_ATTR] = backlog
    conn.pause_writing, conn.resume_writing = backlog.pause_writing, backlog.resume_writing
    transport = getattr(conn, "_transport", None)
    if transport is not None:
        # Calls the new pause_writing if the buffer is above `high`, unless the transport
        # had already called the old one; then it calls resume_writing once drained.
        transport.set_write_buffer_limits(high=high, low=high // 4)
        backlog.full = transport.get_write_buffer_size() > high
    return backlog
