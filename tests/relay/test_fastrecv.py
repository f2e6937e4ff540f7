"""AES-GCM channel data decrypted in one step from stock OpenSSH and asyncssh peers, byte-exact."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from relay.ssh.fastrecv import FastReceiver, install
from relay.ssh.quicken import quicken
from tests.relay.test_fastsend import SIZE, _round_trip, _serve, _through_openssh


class _Split:
    """In front of a receiver: hands it each read in random pieces of 1 to 5,000 bytes."""

    def __init__(self, inner: FastReceiver, seed: int) -> None:
        self.inner, self.rng = inner, random.Random(seed)

    def __call__(self, data: bytes, datatype: object = None) -> None:
        off = 0
        while off < len(data):
            k = self.rng.randint(1, 5000)
            self.inner(data[off : off + k])
            off += k


def _receivers(split: bool = False) -> tuple[list[FastReceiver], Any]:
    made: list[FastReceiver] = []

    def on_conn(conn: Any) -> None:
        receiver = install(conn, lambda chan: False)
        assert receiver is not None
        made.append(receiver)
        if split:
            conn.data_received = _Split(receiver, 7)

    return made, on_conn


async def test_openssh_client_data_is_taken_by_the_fast_path_byte_exact(tmp_path: Path) -> None:
    """Stock `ssh -L` (aes128-gcm): its data packets are decrypted here; the echo is exact."""
    made, on_conn = _receivers()
    srv = await _serve(rekey_bytes=2**30, fast=False, on_conn=on_conn)
    try:
        payload = os.urandom(SIZE)
        assert await _through_openssh(tmp_path, srv.port, payload) == payload
        assert [r.packets >= SIZE // 32768 for r in made] == [True]
    finally:
        srv.server.close()
        await srv.server.wait_closed()


async def test_reads_split_anywhere_keep_every_byte(tmp_path: Path) -> None:
    """Reads cut at random points (inside headers, tags, packets) lose and reorder nothing."""
    made, on_conn = _receivers(split=True)
    srv = await _serve(rekey_bytes=2**30, on_conn=on_conn)
    try:
        payload = os.urandom(SIZE)
        assert await _through_openssh(tmp_path, srv.port, payload) == payload
        assert made[0].packets >= SIZE // 32768 // 2
    finally:
        srv.server.close()
        await srv.server.wait_closed()


async def test_client_rekeying_hands_kex_to_asyncssh_and_resumes(tmp_path: Path) -> None:
    """`ssh -o RekeyLimit=256K`: key exchanges go through asyncssh, data resumes under new keys."""
    made, on_conn = _receivers()
    srv = await _serve(rekey_bytes=2**30, on_conn=on_conn)
    try:
        payload, then = os.urandom(SIZE), os.urandom(100_000)
        opts = ("-o", "RekeyLimit=256K")
        got = await _through_openssh(tmp_path, srv.port, payload, *opts, then=then)
        assert got == payload + then
        assert made[0].packets > 0 and made[0].keys >= 2  # fast again under a new key
    finally:
        srv.server.close()
        await srv.server.wait_closed()


async def test_asyncssh_client_data_is_taken_byte_exact() -> None:
    """asyncssh as the peer (the relay's own agent's stack): decrypted here, echoed exactly."""
    made, on_conn = _receivers()
    srv = await _serve(rekey_bytes=2**30, on_conn=on_conn)
    try:
        payload = os.urandom(SIZE)
        async with asyncssh.connect(
            "127.0.0.1",
            srv.port,
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
        assert made[0].packets >= SIZE // 32768
    finally:
        srv.server.close()
        await srv.server.wait_closed()


async def test_a_flipped_byte_closes_the_connection_and_delivers_nothing_forged(
    tmp_path: Path,
) -> None:
    """A byte changed on the wire fails the GCM tag: asyncssh closes; only genuine bytes came."""
    made, on_conn = _receivers()
    srv = await _serve(rekey_bytes=2**30, on_conn=on_conn)
    flip_at = 1_500_000

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flip: bool) -> None:
        seen = 0
        try:
            while data := await reader.read(65536):
                if flip and seen <= flip_at < seen + len(data):
                    i = flip_at - seen
                    data = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]
                seen += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    writers: list[asyncio.StreamWriter] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", srv.port)
        writers.extend((writer, up_w))
        await asyncio.gather(pipe(reader, up_w, True), pipe(up_r, writer, False))

    mitm = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = mitm.sockets[0].getsockname()[1]
    try:
        payload = os.urandom(SIZE)
        got = await _through_openssh_or_cut(tmp_path, port, payload)
        assert len(got) < len(payload) and got == payload[: len(got)]
        assert made[0].packets > 0
    finally:
        mitm.close()
        for w in writers:
            w.close()
            with contextlib.suppress(ConnectionError, OSError):
                await w.wait_closed()
        await mitm.wait_closed()
        srv.server.close()
        await srv.server.wait_closed()


async def _through_openssh_or_cut(tmp_path: Path, port: int, payload: bytes) -> bytes:
    try:
        return await _through_openssh(tmp_path, port, payload)
    except (ConnectionError, OSError):
        return b""


_ = _round_trip


@pytest.mark.parametrize("parked_first", [False, True])
async def test_a_quickened_channel_closes_and_its_waiters_wake(parked_first: bool) -> None:
    """`quicken` swaps the close Event for a lazy one; waiters before or after it wake."""
    chans: list[Any] = []
    made = asyncio.Event()
    early: list[asyncio.Future[None]] = []

    async def parked(chan: Any) -> None:
        await chan.wait_closed()

    def quickened(chan: Any) -> None:
        quicken(chan, lambda c: False)
        chans.append(chan)
        made.set()

    class Session(asyncssh.SSHTCPSession[bytes]):
        def connection_made(self, chan: Any) -> None:
            if parked_first:  # a waiter parks on asyncssh's Event before quicken runs
                early.append(asyncio.ensure_future(parked(chan)))
                asyncio.get_running_loop().call_soon(quickened, chan)
            else:
                quickened(chan)

    class Server(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return False

        def connection_requested(self, *args: Any) -> Any:
            return Session()

    server = await asyncssh.create_server(
        Server, "127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")]
    )
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncssh.connect("127.0.0.1", port, username="u", known_hosts=None) as conn:
            _reader, writer = await conn.open_connection("x", 1)
            await asyncio.wait_for(made.wait(), 10)
            chan = chans[0]
            assert type(chan._close_event).__name__ == "LazyClosed"
            waiter = asyncio.ensure_future(chan.wait_closed())
            await asyncio.sleep(0)
            writer.close()
            await asyncio.wait_for(asyncio.gather(waiter, *early), 10)
            assert chan._close_event.is_set()
    finally:
        server.close()
        await server.wait_closed()
