"""AES-GCM channel data built in one step reaches stock OpenSSH and asyncssh peers byte-exact."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from relay.ssh import fastsend
from relay.ssh.fastsend import FastSender, fast_sender
from tests.rigs.keys import keypair
from tests.rigs.procs import free_port
from tests.rigs.ssh import CIPHER, local_ready, ssh_cmd

SIZE = 3 * 2**20 + 12345  # several windows' worth, not a multiple of a packet


class _Echo(asyncssh.SSHTCPSession[bytes]):
    """Sends back what it receives, through the fast path when `fast` is set."""

    def __init__(self, senders: list[FastSender], fast: bool) -> None:
        self.senders, self.fast = senders, fast
        self.chan: Any = None
        self.sender: FastSender | None = None

    def connection_made(self, chan: Any) -> None:
        self.chan = chan
        if self.fast:
            self.sender = fast_sender(chan.get_connection())
            assert self.sender is not None
            self.senders.append(self.sender)

    def data_received(self, data: bytes, datatype: Any) -> None:
        if self.sender is not None:
            self.sender.send(self.chan, data)
        else:
            self.chan.write(data)

    def eof_received(self) -> bool:
        self.chan.write_eof()
        return True


class _Server(asyncssh.SSHServer):
    def __init__(self, senders: list[FastSender], fast: bool, on_conn: Any = None) -> None:
        self.senders, self.fast, self.on_conn = senders, fast, on_conn

    def connection_made(self, conn: Any) -> None:
        if self.on_conn is not None:
            self.on_conn(conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: Any) -> bool:
        return True

    def connection_requested(self, *args: Any) -> Any:
        return _Echo(self.senders, self.fast)


class _EchoServer:
    def __init__(self, server: Any, port: int, senders: list[FastSender]) -> None:
        self.server, self.port, self.senders = server, port, senders

    @property
    def packets(self) -> int:
        return sum(s.packets for s in self.senders)


async def _serve(rekey_bytes: int, fast: bool = True, on_conn: Any = None) -> _EchoServer:
    senders: list[FastSender] = []
    server = await asyncssh.create_server(
        lambda: _Server(senders, fast, on_conn),
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        encryption_algs=[CIPHER, "aes256-gcm@openssh.com"],
        rekey_bytes=rekey_bytes,
    )
    return _EchoServer(server, server.sockets[0].getsockname()[1], senders)


@pytest.fixture
async def echo() -> AsyncIterator[_EchoServer]:
    srv = await _serve(rekey_bytes=2**30)
    yield srv
    srv.server.close()
    await srv.server.wait_closed()


async def _round_trip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()

    sending = asyncio.create_task(send())
    got = await asyncio.wait_for(reader.read(), 60)
    await sending
    writer.close()
    return got


async def _through_openssh(
    tmp_path: Path, port: int, payload: bytes, *opts: str, then: bytes = b""
) -> bytes:
    """Round trip `payload` through `ssh -L` (and `then` on a second channel, same connection)."""
    key = tmp_path / "client_key"
    keypair(key)
    lport = free_port()
    cmd = ssh_cmd(key, "echo", port, *opts, "-L", f"127.0.0.1:{lport}:echo:1")
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    drain: asyncio.Task[bytes] | None = None
    try:
        seen = ""
        for needle in local_ready(lport):
            while needle not in seen:
                line = await asyncio.wait_for(proc.stderr.readline(), 20)
                assert line, f"ssh ended: {seen}"
                seen += line.decode(errors="replace")
        drain = asyncio.create_task(proc.stderr.read())  # keep ssh -v from blocking on stderr
        got = await _round_trip(lport, payload)
        if then:
            got += await _round_trip(lport, then)
        return got
    finally:
        proc.terminate()
        await proc.wait()
        if drain is not None:
            drain.cancel()


async def test_openssh_client_gets_fast_packets_byte_exact(
    tmp_path: Path, echo: _EchoServer
) -> None:
    """Stock `ssh -L` (aes128-gcm) checks every fast-path packet; the bytes come back exact."""
    payload = os.urandom(SIZE)
    got = await _through_openssh(tmp_path, echo.port, payload)
    assert got == payload
    assert echo.packets >= SIZE // 32768  # the fast path carried the data


async def test_asyncssh_client_gets_fast_packets_byte_exact(echo: _EchoServer) -> None:
    """asyncssh as the peer (the relay's own agent's stack) reads fast-path packets exactly."""
    payload = os.urandom(SIZE)
    async with asyncssh.connect(
        "127.0.0.1",
        echo.port,
        username="agent",
        known_hosts=None,
        client_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        encryption_algs=["aes256-gcm@openssh.com"],
    ) as conn:
        reader, writer = await conn.open_connection("echo", 1)
        writer.write(payload)
        writer.write_eof()
        got = await asyncio.wait_for(reader.read(), 60)
    assert got == payload
    assert echo.packets >= SIZE // 32768


async def test_rekeying_mid_transfer_falls_back_and_carries_on(tmp_path: Path) -> None:
    """With a rekey every 256 KiB, data crosses key exchanges intact, fast again after one."""
    srv = await _serve(rekey_bytes=256 * 1024)
    try:
        payload, then = os.urandom(SIZE), os.urandom(100_000)
        got = await _through_openssh(tmp_path, srv.port, payload, then=then)
        assert got == payload + then
        assert srv.packets > 0
        assert len({id(s) for s in srv.senders}) == 1  # one connection, one sender
        assert srv.senders[0].keys >= 2  # fast again under a new key
    finally:
        srv.server.close()
        await srv.server.wait_closed()


async def test_another_asyncssh_version_takes_the_ordinary_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside the tested asyncssh versions no fast sender is made; the relay uses chan.write."""
    monkeypatch.setattr(fastsend, "ENABLED", False)
    assert fast_sender(object()) is None


def test_the_installed_asyncssh_is_one_whose_internals_were_checked() -> None:
    """The fast path reads asyncssh internals: a new version must be checked, then listed."""
    assert asyncssh.__version__ in fastsend.TESTED, (
        f"asyncssh {asyncssh.__version__}: check relay/ssh/fastsend.py against it, then add it"
    )
    conn_names = ("_send_encryption", "_compressor", "_kex_complete", "_auth_complete")
    source = Path(asyncssh.connection.__file__).read_text()
    for name in (*conn_names, "_deferred_packets", "_send_seq", "_rekey_bytes_sent"):
        assert f"self.{name}" in source, name
    chan_source = Path(asyncssh.channel.__file__).read_text()
    for name in ("_send_buf", "_send_state", "_send_window", "_send_pktsize", "_send_chan"):
        assert f"self.{name}" in chan_source, name
