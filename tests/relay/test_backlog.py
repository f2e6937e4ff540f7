"""An SSH connection's backlog: installed once, holds each writer once, releases the living."""

from __future__ import annotations

from relay.ssh.backlog import ConnBacklog, backlog_of


class FakeTransport:
    """What the backlog asks of a transport: limits set, buffer size read."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.limits: tuple[int, int] | None = None

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.limits = (high, low)

    def get_write_buffer_size(self) -> int:
        return self.size


class FakeConn:
    def __init__(self, size: int = 0) -> None:
        self._transport = FakeTransport(size)

    def pause_writing(self) -> None:
        """asyncssh's own: does nothing."""

    def resume_writing(self) -> None:
        """asyncssh's own: does nothing."""


class FakeLeg:
    def __init__(self) -> None:
        self.backed_up = False
        self.lost = False
        self.told: list[bool] = []

    def on_backlog(self, full: bool) -> None:
        self.told.append(full)


def test_installed_once_with_the_high_water_mark() -> None:
    """The first call installs the callbacks and the limits; later ones find the same backlog."""
    conn = FakeConn()
    backlog = backlog_of(conn, 4096)
    assert backlog_of(conn, 1) is backlog
    assert conn._transport.limits == (4096, 1024)
    conn.pause_writing()
    assert backlog.full
    conn.resume_writing()
    assert not backlog.full


def test_a_transport_already_above_the_mark_starts_full() -> None:
    """Installed on a transport above its new high-water mark, the backlog is full at once."""
    assert backlog_of(FakeConn(size=5000), 4096).full


def test_each_writer_is_held_once_and_only_living_ones_are_released() -> None:
    """Writers held while full hear `True` once, and `False` at resume unless they are gone."""
    backlog = ConnBacklog()
    a, b = FakeLeg(), FakeLeg()
    backlog.pause_writing()
    backlog.hold(a)
    backlog.hold(b)
    b.lost = True
    backlog.resume_writing()
    assert (a.told, b.told, a.backed_up, backlog.held) == ([True, False], [True], False, {})


def test_a_writer_whose_channel_closed_is_forgotten() -> None:
    """A connection that stays full keeps no reference to a closed channel's leg."""
    backlog = ConnBacklog()
    a = FakeLeg()
    backlog.pause_writing()
    backlog.hold(a)
    backlog.forget(a)
    backlog.forget(a)
    backlog.resume_writing()
    assert (a.told, backlog.held) == ([True], {})
