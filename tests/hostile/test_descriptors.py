"""nofile 1024 and 5,000 silent connections: the relay stays below its limit and agents get in."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.rigs.flood import Flood, Gauge, elapsed, moves_data
from tests.rigs.keys import AgentSpec
from tests.rigs.procs import free_port
from tests.rigs.relay import Relay
from tests.rigs.services import DigestService, pattern
from tests.rigs.ssh import Ssh, expose, local_forward
from tests.rigs.waits import poll

MiB = 1024 * 1024
NOFILE = 1024
BATCH = 500  # connections opened at once: a burst the listen backlog holds


async def public_port(
    relay: Relay, agent: AgentSpec, target: int, clients: list[Ssh], drains: list[Any]
) -> int:
    ssh = Ssh(relay, agent, "-N", "-R", f"0:127.0.0.1:{target}", "relay")
    clients.append(ssh)
    await ssh.start("-v")
    line = await ssh.wait_for_line("Allocated port")
    match = re.search(r"Allocated port (\d+) for remote forward", line)
    assert match, line
    assert ssh.proc is not None and ssh.proc.stderr is not None
    # ssh -v writes lines for each of the many channels: keep its stderr drained
    drains.append(asyncio.create_task(ssh.proc.stderr.read()))
    return int(match.group(1))


async def connections(relay: Relay) -> dict[str, Any]:
    return dict((await relay.call("status"))["connections"])


async def flood_in_batches(relay: Relay, flood: Flood, port: int, count: int, first: int) -> None:
    """`count` silent connections to `port` from 20 addresses, each batch held or refused."""
    for start in range(0, count, BATCH):
        seen = await _seen(relay)
        flood.open(port, min(BATCH, count - start), sources=20, first_source=first)
        goal = seen + min(BATCH, count - start)
        await poll(lambda n=goal: _reached(relay, n), f"{goal} connections seen", timeout=60)


async def _seen(relay: Relay) -> int:
    held = await connections(relay)
    return int(held["total"]) + sum(held["refused"].values())


async def _reached(relay: Relay, goal: int) -> bool:
    return await _seen(relay) >= goal


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_5000_silent_connections_under_nofile_1024_leave_room_for_agents(
    tmp_path: Path, agents: dict[str, AgentSpec], clients: list[Ssh], loop: str
) -> None:
    """5,000 silent peers at SSH and a public port: below nofile; an agent logs in, data moves."""
    relay = Relay(
        tmp_path,
        list(agents.values()),
        # fair shares out of the way: only the descriptor cap stands before the limit
        extra={"shares": {"streams_per_tunnel": 10_000, "connections_per_source": 10_000}},
        prefix=["prlimit", f"--nofile={NOFILE}:{NOFILE}"],
        env={"QUOTARELAY_LOOP": loop},
    )
    drains: list[asyncio.Task[bytes]] = []
    await relay.start()
    try:
        await relay.call("grant", "nas-agent", 1 << 40)
        gauge = Gauge(relay.pid)
        assert gauge.nofile() == (NOFILE, NOFILE)
        held = await connections(relay)
        assert (held["descriptor_limit"], held["cap"]) == (NOFILE, NOFILE - 128)
        idle = DigestService(half_close=False)
        service = DigestService(send=pattern(MiB, 31))
        async with idle, service:
            port = await public_port(relay, agents["nas"], idle.port, clients, drains)
            tech_port = free_port()
            await local_forward(relay, agents["tech"], tech_port, "files:22", clients)
            before = gauge.read()
            with Flood() as flood:
                await flood_in_batches(relay, flood, port, 2500, first=0)
                await flood_in_batches(relay, flood, relay.ssh_port, 2500, first=20)
                during = gauge.read()
                held = await connections(relay)
                workers = (await relay.call("status")).get("workers", [])
                start = time.monotonic()
                await expose(relay, agents["nas"], f"files:22:127.0.0.1:{service.port}", clients)
                login_s = elapsed(start)
                await moves_data(tech_port, service, pattern(MiB, 32))
                after = gauge.read()
                assert relay.proc is not None and relay.proc.returncode is None
        print(f"{loop}: login {login_s} s under 5,000 silent peers; {before} {during} {after}")
        print(f"{loop}: connections {held}")
        assert login_s < 5  # the issue asks 1 s; this bound leaves room for a loaded machine
        # each process of the relay has its own limit: none touched its reserve
        assert max(during.fds_max, after.fds_max) < NOFILE - 64
        assert held["refused"]["connection_limit"] > 0
        # connections each process holds (a relay of workers: each worker's, and the SSH
        # port's unauthenticated ones counted by the supervisor's gate for the relay)
        held_each = [w["connections"] for w in workers] or [held["total"]]
        assert max(held_each) <= held["cap"] and held["unauthenticated"] <= held["cap"]
        assert after.rss_kib - before.rss_kib < 256 * 1024
    finally:
        await relay.stop()
        for client in clients:
            await client.stop()
        await asyncio.gather(*drains, return_exceptions=True)
