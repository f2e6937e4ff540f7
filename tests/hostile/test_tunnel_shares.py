"""Fair shares under attack: public ports, endpoint names, idle connections from one source.

Each test attacks a real relay process on loopback with bounded loops, then
checks that a legitimate agent still moves its data byte-exact, that each
refusal wrote one `refused` record with its cause, and that the relay's memory
and descriptors stayed bounded.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.hostile.shares_rig import Figures, figures, refused
from tests.rigs.keys import AgentSpec, make_agent
from tests.rigs.procs import free_port
from tests.rigs.relay import Relay
from tests.rigs.services import DigestService, exchange, pattern, sha
from tests.rigs.ssh import Ssh, expose, local_forward
from tests.rigs.waits import poll

KiB = 1024
MiB = 1024 * KiB
RSS_GROWTH_KIB = 32 * 1024  # what an attack may add to the relay's memory, at most


@pytest.fixture
def agents(tmp_path: Path) -> dict[str, AgentSpec]:
    return {
        "grab": make_agent(tmp_path, "grab-agent", "acme", "client"),
        "nas": make_agent(tmp_path, "nas-agent", "acme", "client"),
        "tech": make_agent(tmp_path, "tech", "acme", "support"),
        "other": make_agent(tmp_path, "other-agent", "globex", "client"),
        "small": make_agent(tmp_path, "small-agent", "acme", "client"),
    }


@pytest.fixture
async def relay(tmp_path: Path, agents: dict[str, AgentSpec]) -> AsyncIterator[Relay]:
    agents["small"].limits = {"streams_per_tunnel": 2}  # its registry entry lowers the 512
    r = Relay(tmp_path, list(agents.values()))
    await r.start()
    yield r
    await r.stop()


def bounded(base: Figures, after: Figures, fds: int) -> None:
    """The relay grew by at most `fds` descriptors and RSS_GROWTH_KIB of memory."""
    assert after.fds - base.fds <= fds, (base, after)
    assert after.rss_kib - base.rss_kib <= RSS_GROWTH_KIB, (base, after)


async def allocated_port(ssh: Ssh) -> int:
    line = await ssh.wait_for_line("Allocated port")
    match = re.search(r"Allocated port (\d+) for remote forward", line)
    assert match, line
    return int(match.group(1))


async def public_port_moves_data(relay: Relay, agent: AgentSpec, clients: list[Ssh]) -> None:
    """`ssh -R 0:...` as `agent` gets a port of the range; 1 MiB each way arrives byte-exact."""
    down, up = pattern(MiB, 31), pattern(MiB, 32)
    await relay.call("grant", agent.agent_id, 4 * MiB)
    async with DigestService(send=down) as service:
        ssh = Ssh(relay, agent, "-N", "-R", f"0:127.0.0.1:{service.port}", "relay")
        clients.append(ssh)
        await ssh.start()
        port = await allocated_port(ssh)
        assert relay.ports[0] <= port <= relay.ports[1]
        assert await exchange(port, up, len(down)) == (sha(down), len(down))
        await asyncio.wait_for(service.conns[-1].eof.wait(), 30)
        assert service.conns[-1].digest.hexdigest() == sha(up)


async def test_one_agent_asking_for_every_public_port_gets_eight(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """50 `-R 0` on one connection: 8 ports, 42 refusals shown and recorded; others get one."""
    base = figures(relay)
    # distinct targets: ssh merges identical forwards
    asks = [arg for i in range(50) for arg in ("-R", f"0:127.0.0.1:{10_000 + i}")]
    grabber = Ssh(relay, agents["grab"], "-v", "-N", *asks, "relay")
    clients.append(grabber)
    await grabber.start("-o", "ExitOnForwardFailure=no")
    reason = "Remote: quotarelay: too many public ports of agent grab-agent: 8 at most"
    for _ in range(42):
        await grabber.wait_for_line(reason)
    assert grabber.stderr.decode().count("Allocated port") == 8
    await poll(lambda: refused(relay, "too_many_public_ports") == 42, "42 refused records")
    assert (await relay.call("status"))["tunnels"] == 8
    await public_port_moves_data(relay, agents["other"], clients)
    bounded(base, figures(relay), fds=40)
    assert refused(relay, "too_many_public_ports") == 42


class _Debugs(asyncssh.SSHClient):
    """An SSH client that keeps the debug messages the relay shows it."""

    def __init__(self) -> None:
        self.shown: list[str] = []

    def debug_msg_received(self, msg: str, lang: str, always_display: bool) -> None:
        self.shown.append(msg)


async def _login(relay: Relay, agent: AgentSpec) -> tuple[Any, _Debugs]:
    conn, client = await asyncssh.create_connection(
        _Debugs,
        "127.0.0.1",
        relay.ssh_port,
        username=agent.agent_id,
        client_keys=[str(agent.key_path)],
        known_hosts=None,
        agent_path=None,
    )
    assert isinstance(client, _Debugs)
    return conn, client


async def test_5000_endpoint_names_are_refused_after_64(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """One connection registering 5,000 names gets 64; the rest are refused with the reason."""
    base = figures(relay)
    conn, client = await _login(relay, agents["grab"])
    async with conn:
        taken = 0
        for i in range(5000):
            try:
                await conn.forward_remote_port(f"name{i}", 22, "127.0.0.1", 9)
                taken += 1
            except asyncssh.ChannelListenError:
                pass
        assert taken == 64
        reason = "quotarelay: too many endpoints of agent grab-agent: 64 at most"
        assert sum(reason in m for m in client.shown) == 5000 - 64
        await poll(lambda: refused(relay, "too_many_endpoints") == 5000 - 64, "4936 records")
        attacked = figures(relay)
        logged = (relay.tmp / "relay.log").read_text().count('"cause": "too_many_endpoints"')
        assert 1 <= logged <= 5  # once per agent and cause every 10 s, not a line a refusal

        # meanwhile another agent of the account exposes an endpoint and a technician uses it
        down, up = pattern(MiB, 41), pattern(MiB, 42)
        await relay.call("grant", "nas-agent", 4 * MiB)
        async with DigestService(send=down) as service:
            await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{service.port}", clients)
            port = free_port()
            await local_forward(relay, agents["tech"], port, "nas:22", clients)
            assert await exchange(port, up, len(down)) == (sha(down), len(down))
            await asyncio.wait_for(service.conns[-1].eof.wait(), 30)
            assert service.conns[-1].digest.hexdigest() == sha(up)
    bounded(base, attacked, fds=20)

    async def released() -> bool:
        return bool((await relay.call("status"))["tunnels"] <= 1)

    await poll(released, "the 64 endpoints given back when the connection ended")
    conn, _ = await _login(relay, agents["grab"])
    async with conn:
        await conn.forward_remote_port("again", 22, "127.0.0.1", 9)  # its share is back


async def test_1100_idle_connections_from_one_source_are_capped_at_64(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """One address holds 64 connections on a public port, the rest close at once; others get in."""
    down, up = pattern(64 * KiB, 51), pattern(64 * KiB, 52)
    await relay.call("grant", "nas-agent", 64 * MiB)
    async with DigestService(send=down) as service:
        ssh = Ssh(relay, agents["nas"], "-N", "-R", f"0:127.0.0.1:{service.port}", "relay")
        clients.append(ssh)
        await ssh.start()
        port = await allocated_port(ssh)
        base = figures(relay)
        idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            for _ in range(11):
                idle += await asyncio.gather(
                    *(
                        asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
                        for _ in range(100)
                    )
                )

            def closed() -> int:
                return sum(r.at_eof() or r.exception() is not None for r, _ in idle)

            await poll(lambda: closed() == 1100 - 64, "1036 connections closed by the relay")
            await poll(lambda: len(service.conns) == 64, "64 streams reaching the service")
            await poll(
                lambda: refused(relay, "too_many_connections_from_source") == 1036,
                "one refused record per refused connection",
            )
            assert len(await relay.call("streams")) == 64
            attacked = figures(relay)
            assert await exchange(port, up, len(down)) == (sha(down), len(down))
            await asyncio.wait_for(service.conns[-1].eof.wait(), 30)
            assert service.conns[-1].digest.hexdigest() == sha(up)
        finally:
            for _, writer in idle:
                writer.close()
    bounded(base, attacked, fds=64 + 20)


async def test_streams_per_tunnel_follow_the_owners_registry_entry(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """An owner limited to 2 streams a tunnel: a third channel fails with the reason, then fits."""
    await relay.call("grant", "small-agent", 4 * MiB)
    async with DigestService() as service:
        await expose(relay, agents["small"], f"small:22:127.0.0.1:{service.port}", clients)
        port = free_port()
        tech = await local_forward(relay, agents["tech"], port, "small:22", clients)
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await poll(lambda: len(service.conns) == 2, "two streams at the service")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await tech.wait_for_line("quotarelay: too many live streams of this tunnel: 2 at most")
        assert await asyncio.wait_for(reader.read(), 20) == b""  # closed, nothing relayed
        writer.close()
        await poll(lambda: refused(relay, "too_many_streams") == 1, "one refused record")
        held[0][1].close()  # one stream ends: its share is given back

        async def one_live() -> bool:
            return len(await relay.call("streams")) == 1

        await poll(one_live, "the first stream closed")
        up = pattern(256 * KiB, 61)
        assert await exchange(port, up, 0) == (sha(b""), 0)
        await poll(lambda: len(service.conns) == 3, "the new stream at the service")
        await asyncio.wait_for(service.conns[-1].eof.wait(), 30)
        assert service.conns[-1].digest.hexdigest() == sha(up)
        held[1][1].close()
