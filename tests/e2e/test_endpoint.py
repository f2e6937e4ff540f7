"""TCP endpoints: `ssh -R nas:22:...` on the client, `ssh -L` on the support side."""

from __future__ import annotations

import asyncio
import socket

from relay.streamlog.query import list_streams
from tests.rigs.keys import AgentSpec
from tests.rigs.relay import Relay
from tests.rigs.services import DigestService, exchange, pattern, sha
from tests.rigs.ssh import Ssh, expose, local_forward
from tests.rigs.waits import poll

MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_50_mib_each_way_byte_exact(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """50 MiB each way through an endpoint arrive digest-equal and are counted exactly."""
    size = 50 * MiB
    down_data, up_data = pattern(size, 1), pattern(size, 2)
    await relay.call("grant", "nas-agent", 2 * size)
    async with DigestService(send=down_data) as service:
        await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{service.port}", clients)
        port = free_port()
        await local_forward(relay, agents["tech"], port, "nas:22", clients)
        digest, got = await exchange(port, up_data, size)
        assert (digest, got) == (sha(down_data), size)
        conn = service.conns[0]
        await asyncio.wait_for(conn.eof.wait(), 30)
        assert (conn.digest.hexdigest(), conn.received) == (sha(up_data), size)
    view = await relay.call("agent", "nas-agent")
    assert view["used"] == 2 * size

    async def logged() -> bool:
        rows = await list_streams(relay.db_path, agent="nas-agent")
        return len(rows) == 1 and rows[0]["state"] == "closed"

    await poll(logged, "the stream's close record")
    row = (await list_streams(relay.db_path, agent="nas-agent"))[0]
    assert (row["bytes_up"], row["bytes_down"]) == (size, size)
    assert row["tunnel_id"] == "acme/nas-agent/tcp_endpoint/nas:22"
