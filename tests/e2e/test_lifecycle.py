"""SIGTERM closes cleanly and flushes; after SIGKILL a restart closes the orphans."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

from relay.streamlog.query import list_streams
from tests.rigs.keys import AgentSpec
from tests.rigs.relay import ROOT, Relay
from tests.rigs.services import DigestService
from tests.rigs.ssh import Ssh, expose, local_forward
from tests.rigs.waits import poll


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _open_stream(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh], service: DigestService
) -> asyncio.StreamWriter:
    await relay.call("grant", "nas-agent", 1_000_000)
    await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{service.port}", clients)
    port = free_port()
    await local_forward(relay, agents["tech"], port, "nas:22", clients)
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"y" * 4321)
    await poll(lambda: bool(service.conns) and service.conns[0].received == 4321, "4321 bytes")
    return writer


async def test_sigterm_closes_streams_flushes_and_exits_0(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """SIGTERM: exit code 0, listener closed, the open stream logged closed as relay_shutdown."""
    async with DigestService(half_close=False) as service:
        writer = await _open_stream(relay, agents, clients, service)
        assert await relay.signal(signal.SIGTERM) == 0
        writer.close()
    rows = await list_streams(relay.db_path)
    assert [(r["state"], r["close_reason"], r["bytes_up"]) for r in rows] == [
        ("closed", "relay_shutdown", 4321)
    ]
    try:
        _, w = await asyncio.open_connection("127.0.0.1", relay.ssh_port)
    except ConnectionRefusedError:
        pass
    else:
        w.close()
        raise AssertionError("the relay still accepts SSH connections after SIGTERM")


async def test_sigkill_then_restart_closes_orphans_as_relay_restart(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """After SIGKILL the stream log reopens cleanly and shows the open stream closed."""
    async with DigestService(half_close=False) as service:
        writer = await _open_stream(relay, agents, clients, service)

        async def interim_written() -> bool:
            rows = await list_streams(relay.db_path, open_only=True)
            return [r["bytes_up"] for r in rows] == [4321]

        await poll(interim_written, "the open stream with its bytes in the stream log")
        assert await relay.signal(signal.SIGKILL) == -signal.SIGKILL
        writer.close()
    assert [r["state"] for r in await list_streams(relay.db_path)] == ["open"]
    await relay.start()
    rows = await list_streams(relay.db_path)
    assert [(r["state"], r["close_reason"], r["bytes_up"]) for r in rows] == [
        ("closed", "relay_restart", 4321)
    ]
    assert (await relay.call("status"))["streams"] == 0


async def test_ssh_port_in_use_is_a_clear_error_and_exit_2(
    tmp_path: Path, agents: dict[str, AgentSpec]
) -> None:
    """A relay that cannot listen says which key and why, in one line, exit code 2."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        relay = Relay(tmp_path, list(agents.values()))
        relay.extra = {"relay": {"ssh_listen": f"127.0.0.1:{port}"}}
        relay.write_config()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tools.cli", "relay", "run", "--config", str(relay.config_path),
            cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert f"quotarelay: relay.ssh_listen: cannot listen on 127.0.0.1:{port}" in err.decode()
