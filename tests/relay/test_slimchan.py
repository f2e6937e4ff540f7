"""SlimTCPChannel behaves as asyncssh's own channel: data, pauses, extra info, close, logs."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from typing import Any

import asyncssh
import pytest

from relay.ssh.slimchan import ENABLED, SlimTCPChannel, on_closed, slim_channels
from tests.rigs.waits import poll

pytestmark = pytest.mark.skipif(not ENABLED, reason="slim channels need a checked asyncssh")
SIZE = 4 * 1024 * 1024


class _Sink(asyncssh.SSHTCPSession[bytes]):
    """The server's end of a direct-tcpip channel: keeps what it reads, echoes its digest."""

    def __init__(self) -> None:
        self.chan: Any = None
        self.got = bytearray()

    def connection_made(self, chan: Any) -> None:
        self.chan = chan

    def data_received(self, data: bytes, datatype: Any) -> None:
        self.got += data

    def eof_received(self) -> bool:
        self.chan.write(hashlib.sha256(self.got).hexdigest().encode())
        self.chan.write_eof()
        return True


class _Server(asyncssh.SSHServer):
    def __init__(self, made: list[tuple[Any, _Sink]], closed: list[int]) -> None:
        self.made, self.closed = made, closed

    def connection_made(self, conn: Any) -> None:
        self.conn = conn
        slim_channels(conn)

    def begin_auth(self, username: str) -> bool:
        return False

    def connection_requested(self, *args: Any) -> Any:
        chan, sink = self.conn.create_tcp_channel(), _Sink()
        on_closed(chan, lambda: self.closed.append(len(self.made)))
        self.made.append((chan, sink))
        return chan, sink


async def test_a_slim_channel_carries_data_through_pauses_and_closes_once() -> None:
    """Bytes sent while the server paused reading arrive whole and in order after resume;
    extra info, wait_closed and the close callback work as with asyncssh's channel."""
    made: list[tuple[Any, _Sink]] = []
    closed: list[int] = []
    server = await asyncssh.create_server(
        lambda: _Server(made, closed),
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
    )
    port = server.sockets[0].getsockname()[1]
    payload = os.urandom(SIZE)
    try:
        async with asyncssh.connect(
            "127.0.0.1", port, known_hosts=None, username="u", client_keys=None
        ) as conn:
            writer, reader = await _open(conn)
            chan, sink = made[0]
            assert type(chan) is SlimTCPChannel and not vars(chan)  # everything in slots
            assert chan.get_extra_info("local_peername") == ("example", 22)  # inbound: as asyncssh
            assert chan.get_extra_info("remote_peername") == ("10.0.0.1", 1234)
            assert chan.get_extra_info("peername") == ("", 0)
            assert chan.get_extra_info("connection") is chan.get_connection()
            assert chan.get_extra_info("unknown", 7) == 7
            chan.set_extra_info(note="kept")
            assert chan.get_extra_info("note") == "kept"
            chan.pause_reading()
            writer.write(payload[: SIZE // 2])
            await poll(lambda: bool(chan._recv_buf), "data held while paused")
            chan.resume_reading()
            writer.write(payload[SIZE // 2 :])
            writer.write_eof()
            digest = await asyncio.wait_for(reader.read(), 60)
            assert digest.decode() == hashlib.sha256(payload).hexdigest()
            assert bytes(sink.got) == payload
            writer.close()
            await asyncio.wait_for(chan.wait_closed(), 30)
        assert closed == [1]
    finally:
        server.close()
        await server.wait_closed()


async def _open(conn: Any) -> tuple[Any, Any]:
    reader, writer = await conn.open_connection("example", 22, orig_host="10.0.0.1", orig_port=1234)
    return writer, reader


async def test_a_slim_channel_logs_with_its_context_only_when_the_level_allows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Below the level nothing is made; at it, lines carry the channel's "chan=N" context."""
    made: list[tuple[Any, _Sink]] = []
    server = await asyncssh.create_server(
        lambda: _Server(made, []),
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
    )
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncssh.connect(
            "127.0.0.1", port, known_hosts=None, username="u", client_keys=None
        ) as conn:
            writer, _reader = await _open(conn)
            chan = made[0][0]
            with caplog.at_level(logging.WARNING, logger="asyncssh"):
                chan.logger.debug1("quiet")
                chan.logger.info("quiet too")
            assert chan._logger is None and "quiet" not in caplog.text
            with caplog.at_level(logging.DEBUG, logger="asyncssh"):
                chan.logger.info("heard")
            assert "[conn=" in caplog.text and f"chan={chan._recv_chan}] heard" in caplog.text
            writer.close()
    finally:
        server.close()
        await server.wait_closed()
