"""Exact enforcement: grants split chunks, paused streams stay open, grants resume them."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import struct
from pathlib import Path

from relay.streamlog.query import list_streams
from tests.rigs.keys import AgentSpec
from tests.rigs.relay import Relay
from tests.rigs.services import DigestService, pattern, sha
from tests.rigs.ssh import Ssh, expose, local_forward
from tests.rigs.waits import poll

MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tcp_state(writer: asyncio.StreamWriter) -> int:
    """The kernel's TCP state of a socket (1 = ESTABLISHED)."""
    sock = writer.get_extra_info("socket")
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    return int(struct.unpack("B", info[:1])[0])


async def test_grant_limits_pause_keeps_socket_and_grant_resumes(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """Exactly the grant arrives; the paused socket stays up 5 s; the rest follows on it."""
    grant, size = 1_000_003, 3 * MiB
    payload = pattern(size, 7)
    await relay.call("grant", "nas-agent", grant)
    async with DigestService(half_close=False) as service:
        await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{service.port}", clients)
        port = free_port()
        await local_forward(relay, agents["tech"], port, "nas:22", clients)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        await poll(lambda: bool(service.conns) and service.conns[0].received == grant, "the grant")

        async def paused() -> bool:
            rows = await list_streams(relay.db_path, paused_only=True)
            return len(rows) == 1

        await poll(paused, "a paused stream in the stream log")
        await asyncio.sleep(5)  # the behaviour under test is "still connected 5 s later"
        conn = service.conns[0]
        assert conn.received == grant
        assert not conn.closed.is_set() and not reader.at_eof()
        assert tcp_state(writer) == 1
        view = await relay.call("agent", "nas-agent")
        assert (view["used"], view["remaining"], view["state"]) == (grant, 0, "depleted")

        await relay.call("grant", "nas-agent", size - grant)
        await writer.drain()
        writer.write_eof()
        await asyncio.wait_for(conn.eof.wait(), 30)
        assert (conn.received, conn.digest.hexdigest()) == (size, sha(payload))
        assert len(service.conns) == 1
        writer.close()
    rows = await list_streams(relay.db_path, agent="nas-agent")
    assert len(rows) == 1 and rows[0]["pauses"] >= 1


async def test_idle_stream_adds_nothing(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """A stream left idle for several seconds adds 0 bytes, while interim records flow."""
    await relay.call("grant", "nas-agent", 10 * MiB)
    async with DigestService() as service:
        await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{service.port}", clients)
        port = free_port()
        await local_forward(relay, agents["tech"], port, "nas:22", clients)
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x" * 1000)
        await poll(lambda: bool(service.conns) and service.conns[0].received == 1000, "1000 bytes")
        used = (await relay.call("agent", "nas-agent"))["used"]
        assert used == 1000

        async def interims() -> int:
            rows = await list_streams(relay.db_path, open_only=True)
            return len(rows)

        before = await relay.call("streams")
        await asyncio.sleep(3)  # idle time is the behaviour under test
        after = await relay.call("streams")
        assert [(s["bytes_up"], s["bytes_down"]) for s in before] == [(1000, 0)]
        assert [(s["bytes_up"], s["bytes_down"]) for s in after] == [(1000, 0)]
        assert (await relay.call("agent", "nas-agent"))["used"] == 1000
        rows = await list_streams(relay.db_path, open_only=True)
        assert [(r["bytes_up"], r["bytes_down"]) for r in rows] == [(1000, 0)]
        writer.close()


async def test_200_streams_share_one_bucket_exactly(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """200 concurrent streams deliver exactly the grant between them; a grant resumes all."""
    count, each = 200, 64 * 1024
    grant = count * each // 3 + 12_345
    payloads = [pattern(each, 100 + i) for i in range(count)]
    await relay.call("grant", "nas-agent", grant)
    async with DigestService() as service:
        await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{service.port}", clients)
        port = free_port()
        await local_forward(relay, agents["tech"], port, "nas:22", clients)
        writers = []
        for data in payloads:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(data)
            writers.append(writer)

        def delivered() -> int:
            return sum(c.received for c in service.conns)

        await poll(lambda: delivered() == grant, f"{grant} bytes delivered", timeout=60)
        view = await relay.call("agent", "nas-agent")
        assert (view["used"], view["remaining"]) == (grant, 0)
        assert view["waiting"] > 0
        assert delivered() == grant

        await relay.call("grant", "nas-agent", count * each - grant)
        for w in writers:
            w.write_eof()
        await poll(lambda: len(service.conns) == count, "every stream connected", timeout=60)
        await poll(lambda: all(c.eof.is_set() for c in service.conns), "every stream done", 60)
        got = sorted(c.digest.hexdigest() for c in service.conns)
        assert got == sorted(hashlib.sha256(p).hexdigest() for p in payloads)
        for w in writers:
            w.close()
    assert (await relay.call("agent", "nas-agent"))["used"] == count * each


async def test_inactive_pauses_then_activation_resumes_and_grace_closes(
    tmp_path: Path, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """Deactivate pauses a live stream; activate resumes it; past the grace it closes."""
    relay = Relay(tmp_path, list(agents.values()), extra={"quota": {"inactive_grace": "2s"}})
    await relay.start()
    try:
        await relay.call("grant", "nas-agent", 10 * MiB)
        async with DigestService(half_close=False) as service:
            await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{service.port}", clients)
            port = free_port()
            await local_forward(relay, agents["tech"], port, "nas:22", clients)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"a" * 100)
            await poll(lambda: bool(service.conns) and service.conns[0].received == 100, "100")
            await relay.call("set_active", "nas-agent", False)
            writer.write(b"b" * 100)
            await poll(lambda: _states(relay, "paused"), "the stream to pause")
            assert service.conns[0].received == 100
            await relay.call("set_active", "nas-agent", True)
            await poll(lambda: service.conns[0].received == 200, "the held bytes after activation")
            await relay.call("set_active", "nas-agent", False)
            await poll(lambda: service.conns[0].closed.is_set(), "the close after the grace")
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()

        async def closed() -> bool:
            rows = await list_streams(relay.db_path)
            return [(r["close_reason"], r["bytes_up"]) for r in rows] == [("inactive", 200)]

        await poll(closed, "the close record with reason inactive")
    finally:
        await relay.stop()


async def _states(relay: Relay, state: str) -> bool:
    return [s["state"] for s in await relay.call("streams")] == [state]
