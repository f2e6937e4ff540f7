"""Public TCP ports (`ssh -R 0:...`) and `ssh -J relay nas` to an SSH server behind an endpoint."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import asyncssh
import pytest

from tests.rigs.keys import AgentSpec
from tests.rigs.relay import Relay
from tests.rigs.services import DigestService, exchange, pattern, sha
from tests.rigs.ssh import Ssh, expose
from tests.rigs.waits import poll

MiB = 1024 * 1024


async def allocated_port(ssh: Ssh) -> int:
    line = await ssh.wait_for_line("Allocated port")
    match = re.search(r"Allocated port (\d+) for remote forward", line)
    assert match, line
    return int(match.group(1))


async def test_public_port_relays_byte_exact_and_counts(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """-R 0:... gets a port from the range; anyone connecting to it reaches the agent's service."""
    size = 5 * MiB
    down, up = pattern(size, 11), pattern(size, 12)
    await relay.call("grant", "web-agent", 2 * size)
    async with DigestService(send=down) as service:
        ssh = Ssh(relay, agents["web"], "-N", "-R", f"0:127.0.0.1:{service.port}", "relay")
        clients.append(ssh)
        await ssh.start()
        port = await allocated_port(ssh)
        assert relay.ports[0] <= port <= relay.ports[1]
        await poll(lambda: _tunnels(relay, 1), "the public tunnel")
        digest, got = await exchange(port, up, size)
        assert (digest, got) == (sha(down), size)
        await asyncio.wait_for(service.conns[0].eof.wait(), 30)
        assert service.conns[0].digest.hexdigest() == sha(up)
    assert (await relay.call("agent", "web-agent"))["used"] == 2 * size


async def _tunnels(relay: Relay, n: int) -> bool:
    return (await relay.call("status"))["tunnels"] == n


async def test_public_port_is_sticky_across_reconnects(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """An agent reconnecting with -R 0 gets its previous port back: same tunnel id."""
    first = Ssh(relay, agents["web"], "-N", "-R", "0:127.0.0.1:9", "relay")
    clients.append(first)
    await first.start()
    port = await allocated_port(first)
    await first.stop()
    await poll(lambda: _tunnels(relay, 0), "the tunnel to close")
    second = Ssh(relay, agents["web"], "-N", "-R", "0:127.0.0.1:9", "relay")
    clients.append(second)
    await second.start()
    assert await allocated_port(second) == port


async def test_public_port_at_a_chosen_port_in_range(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """A port inside the range may be asked for by number."""
    port = relay.ports[0] + 7
    async with DigestService(send=b"pong") as service:
        await expose(relay, agents["web"], f"{port}:127.0.0.1:{service.port}", clients)
        await relay.call("grant", "web-agent", 100)
        digest, got = await exchange(port, b"ping", 4)
        assert (digest, got) == (sha(b"pong"), 4)


class _NasServer(asyncssh.SSHServer):  # type: ignore[misc]
    def begin_auth(self, username: str) -> bool:
        return False  # the test's stand-in for the NAS accepts anyone


async def _nas_session(process: asyncssh.SSHServerProcess[str]) -> None:
    process.stdout.write(f"hello from nas, you ran {process.command}\n")
    process.exit(0)


@pytest.fixture
async def nas_sshd() -> AsyncIterator[int]:
    """A real SSH server (asyncssh) standing in for the NAS's sshd on 127.0.0.1."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        _NasServer, "127.0.0.1", 0, server_host_keys=[key], process_factory=_nas_session
    )
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_jump_through_relay_to_an_endpoint(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh], nas_sshd: int
) -> None:
    """`ssh -J relay nas` reaches the SSH server behind the endpoint nas:22."""
    await relay.call("grant", "nas-agent", 10 * MiB)
    await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{nas_sshd}", clients)
    hosts = "Host nas\n  HostName nas\n  Port 22\n  User admin\n  ProxyJump relay\n"
    ssh = Ssh(relay, agents["tech"], "nas", "uptime", hosts=hosts)
    clients.append(ssh)
    await ssh.start()
    assert ssh.proc is not None and ssh.proc.stdout is not None
    out = await asyncio.wait_for(ssh.proc.stdout.read(), 30)
    code, err = await ssh.finish()
    assert (code, out) == (0, b"hello from nas, you ran uptime\n"), err
    view = await relay.call("agent", "nas-agent")
    assert view["used"] > 0
