"""An idle public-port stream through a whole relay costs at most BUDGET bytes and no task.

The relay's hub and SSH front run in this process on uvloop, as `relay run` runs
them; the client agent is a stock `ssh -R 0:...`, its target a holder process
that accepts and keeps every connection. tracemalloc counts what the relay
allocates for each idle stream; the public clients connect from a thread, and
what they allocate is left out by traceback (`_dial`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import itertools
import socket
import sys
import tracemalloc
from asyncio.subprocess import Process
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from relay.app import open_front
from relay.config import load_config
from relay.hub.hub import Hub
from relay.registry import Registry
from relay.ssh.options import load_host_key
from relay.ssh.slimchan import ENABLED
from tests.rigs.keys import AgentSpec, make_agent
from tests.rigs.procs import free_port
from tests.rigs.relay import ROOMY_SHARES, ROOT, free_port_range, write_relay_files
from tests.rigs.ssh import REMOTE_READY, local_ready, ssh_cmd
from tests.rigs.waits import poll

WARM = 20  # streams opened before measuring: tables and caches exist
N = 300
# Measured on uvloop with asyncssh 2.24.1: 3,441 bytes per idle public-port stream
# (uvloop's transport and handle about 1,100 of them) and 3,639 per endpoint stream (two
# channels, no socket); with asyncssh's own channel class 5,469 and 7,618, and an
# endpoint stream also kept a task waiting for its support channel to close.
BUDGET = {"public": 4000, "endpoint": 4500}

pytestmark = pytest.mark.skipif(not ENABLED, reason="slim channels need a checked asyncssh")


def _dial(port: int, n: int) -> list[socket.socket]:
    """The public clients, from a thread: what they allocate is told apart by these lines."""
    return [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]


def _not_dialling() -> list[tracemalloc.Filter]:
    lines, first = inspect.getsourcelines(_dial)
    return [
        tracemalloc.Filter(False, __file__, lineno=n, all_frames=True)
        for n in range(first, first + len(lines))
    ]


async def _ssh(tmp: Path, name: str, agent: AgentSpec, ssh_port: int, *args: str) -> Process:
    """A stock `ssh -v` agent, its log in a file (it writes a line per channel, never waits)."""
    with (tmp / f"{name}.log").open("wb") as out:
        return await asyncio.create_subprocess_exec(
            *ssh_cmd(agent.key_path, agent.agent_id, ssh_port, *args), stderr=out
        )


async def _logged(tmp: Path, name: str, *needles: str) -> str:
    log = tmp / f"{name}.log"
    await poll(lambda: all(n in log.read_text() for n in needles), f"{needles} from {name}")
    return log.read_text()


async def _tunnel(
    tmp: Path, kind: str, agents: list[AgentSpec], ssh_port: int, target: int, procs: list[Process]
) -> int:
    """The port public clients dial: the public port, or a support agent's `-L` to `nas:22`."""
    owner, tech = agents
    if kind == "public":
        procs.append(await _ssh(tmp, "owner", owner, ssh_port, "-R", f"0:127.0.0.1:{target}"))
        text = await _logged(tmp, "owner", "Allocated port")
        return int(text.split("Allocated port", 1)[1].split()[0])
    procs.append(await _ssh(tmp, "owner", owner, ssh_port, "-R", f"nas:22:127.0.0.1:{target}"))
    await _logged(tmp, "owner", REMOTE_READY)
    port = free_port()
    procs.append(await _ssh(tmp, "tech", tech, ssh_port, "-L", f"127.0.0.1:{port}:nas:22"))
    await _logged(tmp, "tech", *local_ready(port))
    return port


async def _measure(tmp: Path, kind: str) -> tuple[float, int]:
    """Bytes per idle stream and tasks added by N streams, in a relay on this loop."""
    agents = [
        make_agent(tmp, "owner", "acme", "client"),
        make_agent(tmp, "tech", "acme", "support"),
    ]
    config_path = write_relay_files(
        tmp, agents, free_port_range(10), {"shares": dict(ROOMY_SHARES)}
    )
    config = load_config(config_path, env={})
    hub = Hub(config, Registry(config.agents_file), None)
    server = await open_front(config, hub, load_host_key(config.host_key))
    port_file = tmp / "holder.port"
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.load", "hold", str(port_file), cwd=ROOT
    )
    procs = [holder]
    socks: list[socket.socket] = []
    try:
        await poll(lambda: port_file.exists() and port_file.read_text() != "", "the holder")
        ssh_port = server.sockets[0].getsockname()[1]
        port = await _tunnel(tmp, kind, agents, ssh_port, int(port_file.read_text()), procs)
        await _open(hub, port, WARM, socks)
        gc.collect()
        tasks = len(asyncio.all_tasks())
        tracemalloc.start(25)
        try:
            shots = [tracemalloc.take_snapshot()]
            await _open(hub, port, WARM + N, socks)
            left = await _tasks_left(tasks)
            gc.collect()
            shots.append(tracemalloc.take_snapshot())
            await _open(hub, port, WARM + 2 * N, socks)
            gc.collect()
            shots.append(tracemalloc.take_snapshot())
        finally:
            tracemalloc.stop()
        ours = _not_dialling()
        # two batches of N: what is still in flight when a snapshot is taken on loaded cores
        # (buffers, log records) lands in one batch; a real per-stream cost is in both
        costs = [
            sum(
                s.size_diff
                for s in b.filter_traces(ours).compare_to(a.filter_traces(ours), "filename")
            )
            / N
            for a, b in itertools.pairwise(shots)
        ]
        return min(costs), left
    finally:
        for sock in socks:
            sock.close()
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
        hub.close_all("relay_shutdown")
        server.close()
        await hub.drain_tasks()


async def _tasks_left(before: int) -> int:
    """Tasks beyond `before` once those that finish on their own did (asyncssh starts one
    per channel that ends at its first step), or after 30 s."""
    with contextlib.suppress(AssertionError):
        await poll(lambda: len(asyncio.all_tasks()) <= before, "no task per stream", 30)
    return len(asyncio.all_tasks()) - before


async def _open(hub: Hub, port: int, upto: int, socks: list[socket.socket]) -> None:
    """Open public-port streams until `upto`; wait until the relay has all of them open."""
    socks += await asyncio.to_thread(_dial, port, upto - len(socks))

    def all_open() -> bool:
        streams = list(hub.live.values())
        return len(streams) >= upto and all(s.state.value == "open" for s in streams)

    await poll(all_open, f"{upto} open streams", 60)  # generous: cores are shared


def _run(coro: Coroutine[Any, Any, tuple[float, int]]) -> tuple[float, int]:
    result: tuple[float, int] = uvloop.run(coro)  # the relay's own loop
    return result


@pytest.mark.parametrize("kind", ["public", "endpoint"])
def test_an_idle_stream_fits_the_budget_and_holds_no_task(tmp_path: Path, kind: str) -> None:
    """N idle streams (public port, or support agent to endpoint) cost at most their budget
    each and leave no task running (a support channel's share is given back by a callback)."""
    per_stream, tasks = _run(_measure(tmp_path, kind))
    assert tasks == 0, f"{tasks} tasks left running by {N} idle streams"
    assert per_stream <= BUDGET[kind], f"{per_stream:.0f} bytes per idle {kind} stream"
