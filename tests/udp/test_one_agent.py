"""One `quotarelay agent` carries every tunnel kind, TCP ones included."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from relay.udp.flow import RefusalLog
from tests.rigs.agent import AgentProc, start
from tests.rigs.keys import AgentSpec
from tests.rigs.relay import Relay
from tests.udp.helpers import UdpService, datagram, echo_round_trips, peer


async def tcp_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def tcp_round_trip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    writer.write_eof()
    got = await reader.read()
    writer.close()
    return got


async def test_one_agent_exposes_udp_and_tcp_endpoints_and_public_ports(
    relay: Relay, agents: dict[str, AgentSpec], procs: list[AgentProc]
) -> None:
    """expose --udp/--tcp (names and port 0) and connect --udp/--tcp in two processes."""
    await relay.call("grant", "nas-agent", 10**8)
    server = await asyncio.start_server(tcp_echo, "127.0.0.1", 0)
    tcp = server.sockets[0].getsockname()[1]
    try:
        async with UdpService() as echo:
            udp = f"127.0.0.1:{echo.port}"
            client = AgentProc(
                relay, agents["nas"], "expose", "--udp", f"dns:53:{udp}", "--udp", f"0:{udp}",
                "--tcp", f"nas:22:127.0.0.1:{tcp}", "--tcp", f"0:127.0.0.1:{tcp}",
            )  # fmt: skip
            await start(procs, client)
            kinds = {e["kind"]: e["port"] for e in client.events if e["event"] == "tunnel_ready"}
            assert set(kinds) == {"udp_endpoint", "udp_public", "tcp_endpoint", "tcp_public"}
            support = AgentProc(
                relay, agents["tech"], "connect", "--udp", "0:dns:53", "--tcp", "0:nas:22"
            )
            await start(procs, support)
            local = {e["proto"]: e["port"] for e in support.events if e["event"] == "listening"}
            assert (await relay.call("status"))["tunnels"] == 4

            payload = datagram(7, 3000) * 100
            assert await tcp_round_trip(local["tcp"], payload) == payload
            assert await tcp_round_trip(kinds["tcp_public"], payload) == payload
            for port in (local["udp"], kinds["udp_public"]):
                p = await peer(port)
                await echo_round_trips(p, [datagram(i, 1000) for i in range(50)])
                p.close()
    finally:
        server.close()
    used = (await relay.call("agent", "nas-agent"))["used"]
    assert used == 2 * 2 * len(payload) + 2 * 2 * 50 * 1000


def test_refusals_are_logged_once_per_cause_then_rate_limited() -> None:
    """The same cause logs once per interval, then says how many it suppressed."""
    now = [0]
    refusals = RefusalLog(lambda: now[0], every_ms=1000)
    with capture_logs() as logs:
        for _ in range(5):
            refusals.refuse("unknown_flow", flow_id=9)
        refusals.refuse("malformed")
        now[0] = 1000
        refusals.refuse("unknown_flow", flow_id=9)
    assert [(x["cause"], x["suppressed"]) for x in logs] == [
        ("unknown_flow", 0),
        ("malformed", 0),
        ("unknown_flow", 4),
    ]
    assert refusals.counts == {"unknown_flow": 6, "malformed": 1}
    assert all(x["event"] == "udp_refused" and x["log_level"] == "warning" for x in logs)
