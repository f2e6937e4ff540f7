"""The agent comes back by itself: relay restart, same tunnel ids, same public port."""

from __future__ import annotations

import socket
from pathlib import Path

from relay.streamlog.query import list_streams
from tests.rigs.agent import AgentProc, start
from tests.rigs.keys import AgentSpec
from tests.rigs.relay import Relay
from tests.rigs.waits import poll
from tests.udp.helpers import UdpService, datagram, echo_round_trips, peer


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_agents_reconnect_after_a_relay_restart_with_the_same_tunnels(
    tmp_path: Path, agents: dict[str, AgentSpec], procs: list[AgentProc]
) -> None:
    """After a restart both agents re-register; endpoint and public port work, same ids."""
    ssh = f"127.0.0.1:{free_tcp_port()}"
    relay = Relay(tmp_path, list(agents.values()), extra={"relay": {"ssh_listen": ssh}})
    await relay.start()
    try:
        async with UdpService() as echo:
            target = f"127.0.0.1:{echo.port}"
            client = AgentProc(
                relay, agents["nas"], "expose", "--udp", f"dns:53:{target}", "--udp", f"0:{target}"
            )
            await start(procs, client)
            public = (await client.wait_for("tunnel_ready", lambda e: e["name"] is None))["port"]
            support = await start(
                procs, AgentProc(relay, agents["tech"], "connect", "--udp", "0:dns:53")
            )
            local = (await support.wait_for("listening"))["port"]
            await relay.call("grant", "nas-agent", 10**6)
            via_endpoint, via_public = await peer(local), await peer(public)
            await echo_round_trips(via_endpoint, [datagram(i, 100) for i in range(20)])
            await echo_round_trips(via_public, [datagram(i, 200) for i in range(20)])
            before = {s["tunnel_id"] for s in await relay.call("streams")}

            await relay.stop()
            await relay.start()
            await client.ready(session=2)
            await support.ready(session=2)
            ready = [e for e in client.events if e["event"] == "tunnel_ready"]
            assert [e["port"] for e in ready] == [53, public, 53, public]
            await relay.call("grant", "nas-agent", 10**6)
            await echo_round_trips(via_endpoint, [datagram(i, 300) for i in range(20)])
            await echo_round_trips(via_public, [datagram(i, 400) for i in range(20)])
            after = {s["tunnel_id"] for s in await relay.call("streams")}
            via_endpoint.close()
            via_public.close()
        assert (
            before
            == after
            == {
                "acme/nas-agent/udp_endpoint/dns:53",
                f"acme/nas-agent/udp_public/public:{public}",
            }
        )

        async def logged() -> bool:
            rows = await list_streams(relay.db_path, agent="nas-agent")
            reasons = sorted(r["close_reason"] or "" for r in rows)
            return reasons == ["", "", "relay_shutdown", "relay_shutdown"]

        await poll(logged, "two flows closed by the restart and two new ones")
        assert (await relay.call("agent", "nas-agent"))["used"] == 2 * 20 * (300 + 400)
    finally:
        await relay.stop()


async def test_the_support_side_recovers_when_the_client_agent_comes_back(
    relay: Relay, agents: dict[str, AgentSpec], procs: list[AgentProc]
) -> None:
    """A client agent restarted behind a live support agent: the endpoint works again."""
    await relay.call("grant", "nas-agent", 10**6)
    async with UdpService() as echo:
        spec = ("expose", "--udp", f"dns:53:127.0.0.1:{echo.port}")
        first = await start(procs, AgentProc(relay, agents["nas"], *spec))
        support = await start(
            procs, AgentProc(relay, agents["tech"], "connect", "--udp", "0:dns:53")
        )
        p = await peer((await support.wait_for("listening"))["port"])
        await echo_round_trips(p, [datagram(i, 100) for i in range(10)])
        await first.stop()
        await start(procs, AgentProc(relay, agents["nas"], *spec))
        await support.ready(session=2)
        await echo_round_trips(p, [datagram(i, 200) for i in range(10)])
        p.close()
    streams = await relay.call("streams")
    assert [(s["tunnel_id"], s["bytes_up"]) for s in streams] == [
        ("acme/nas-agent/udp_endpoint/dns:53", 2000)
    ]
