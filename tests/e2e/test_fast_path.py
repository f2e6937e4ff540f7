"""The AES-GCM fast paths in a relay process: megabytes both ways, byte-exact, with every peer."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from tests.rigs.agent import AgentProc, start
from tests.rigs.keys import AgentSpec
from tests.rigs.procs import free_port
from tests.rigs.relay import Relay
from tests.rigs.ssh import Ssh, expose, local_forward

SIZE = 6 * 2**20 + 4321  # three windows and more, not a multiple of a packet


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _round_trip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()

    sending = asyncio.create_task(send())
    got = await asyncio.wait_for(reader.read(), 120)
    await sending
    writer.close()
    return got


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture
async def procs() -> AsyncIterator[list[AgentProc]]:
    started: list[AgentProc] = []
    yield started
    for p in started:
        await p.stop()


async def test_stock_openssh_endpoint_tunnel_echoes_megabytes_exactly(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh], echo_port: int
) -> None:
    """`ssh -L` -> relay -> `ssh -R` (aes128-gcm both): 6 MiB out and back, byte-exact."""
    await relay.call("grant", "nas-agent", 10**9)
    await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{echo_port}", clients)
    port = free_port()
    await local_forward(relay, agents["tech"], port, "nas:22", clients)
    payload = os.urandom(SIZE)
    assert await _round_trip(port, payload) == payload
    assert (await relay.call("agent", "nas-agent"))["used"] == 2 * len(payload)  # both ways


async def test_own_agent_endpoint_and_public_port_echo_megabytes_exactly(
    relay: Relay, agents: dict[str, AgentSpec], procs: list[AgentProc], echo_port: int
) -> None:
    """`quotarelay agent` on both ends (asyncssh, aes256-gcm): 6 MiB each way, exact."""
    await relay.call("grant", "nas-agent", 10**9)
    client = AgentProc(
        relay, agents["nas"], "expose",
        "--tcp", f"nas:22:127.0.0.1:{echo_port}", "--tcp", f"0:127.0.0.1:{echo_port}",
    )  # fmt: skip
    await start(procs, client)
    public = next(e["port"] for e in client.events if e.get("kind") == "tcp_public")
    support = AgentProc(relay, agents["tech"], "connect", "--tcp", "0:nas:22")
    await start(procs, support)
    local = next(e["port"] for e in support.events if e["event"] == "listening")
    payload = os.urandom(SIZE)
    assert await _round_trip(local, payload) == payload
    assert await _round_trip(public, payload) == payload
