"""Real parts for UDP tests: agent processes, UDP echo and sink services, UDP peers.

Everything binds 127.0.0.1; every agent process is stopped by the fixture that
started it; conditions are polled with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import asyncssh

from relay.udp.flow import widen_buffers
from tests.harness import ROOT, AgentSpec, Relay, env_without_agent


def known_hosts(relay: Relay) -> Path:
    """A known_hosts file naming the relay's real host key at its address."""
    key = asyncssh.read_private_key(str(relay.tmp / "var" / "relay_host_key"))
    line = f"[127.0.0.1]:{relay.ssh_port} {key.export_public_key().decode().strip()}\n"
    path = relay.tmp / "known_hosts"
    path.write_text(line)
    return path


class AgentProc:
    """`quotarelay agent ...` as a real process; its stdout JSON lines are collected."""

    def __init__(self, relay: Relay, agent: AgentSpec, role: str, *specs: str) -> None:
        self.relay, self.agent, self.role, self.specs = relay, agent, role, specs
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None
        self.log = relay.tmp / f"agent-{agent.agent_id}-{role}.log"

    async def start(self, *extra: str) -> AgentProc:
        """Start it: relay address, key and known hosts from a config file; the id as a flag."""
        config = self.relay.tmp / f"agent-{self.agent.agent_id}.toml"
        config.write_text(
            f'[agent]\nrelay = "127.0.0.1:{self.relay.ssh_port}"\nkey = "{self.agent.key_path}"\n'
            f'known_hosts = "{known_hosts(self.relay)}"\nbackoff_max = "1s"\n'
        )
        args = ["agent", self.role, "--config", str(config), "--user", self.agent.agent_id]
        args += [*extra, *self.specs]
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tools.cli",
                *args,
                cwd=ROOT,
                env=env_without_agent(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.events.append(json.loads(line))

    async def wait_for(
        self,
        event: str,
        match: Callable[[dict[str, Any]], bool] = lambda e: True,
        timeout: float = 20,
    ) -> dict[str, Any]:
        """The first `event` line that matches, waiting up to `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for e in self.events:
                if e["event"] == event and match(e):
                    return e
            assert self.proc is not None
            if self.proc.returncode is not None or loop.time() > deadline:
                raise AssertionError(
                    f"no {event} from agent (rc={self.proc.returncode}): {self.events}"
                    f" {self.log.read_text()[-2000:]}"
                )
            await asyncio.sleep(0.02)

    async def ready(self, session: int = 1) -> AgentProc:
        await self.wait_for("agent_ready", lambda e: e["session"] == session)
        return self

    async def finish(self, timeout: float = 20) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await self._reader
        return code

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            await self._reader


class UdpService(asyncio.DatagramProtocol):
    """A UDP service on 127.0.0.1: echoes (or only counts) each datagram."""

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self.transport: asyncio.DatagramTransport | None = None
        self.received = 0
        self.count = 0
        self.peers: set[Any] = set()
        self.port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        widen_buffers(transport)
        self.port = self.transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received += len(data)
        self.count += 1
        self.peers.add(addr)
        if self.echo and self.transport is not None:
            self.transport.sendto(data, addr)

    async def __aenter__(self) -> UdpService:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.transport is not None:
            self.transport.close()


class Peer(asyncio.DatagramProtocol):
    """A UDP client socket toward 127.0.0.1:port; keeps what comes back."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.got: list[bytes] = []
        self.arrived = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append(data)
        self.arrived.set()

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def peer(port: int) -> Peer:
    loop = asyncio.get_running_loop()
    _, p = await loop.create_datagram_endpoint(Peer, remote_addr=("127.0.0.1", port))
    return p


def datagram(seq: int, size: int) -> bytes:
    """A datagram that names its sequence number and is random after it."""
    assert size >= 4
    return seq.to_bytes(4, "big") + random.Random(seq).randbytes(size - 4)


async def echo_round_trips(p: Peer, payloads: list[bytes], window: int = 16) -> None:
    """Send `payloads` with at most `window` unanswered; every echo must match what was sent."""
    base = len(p.got)
    sent = checked = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while checked < len(payloads):
        while sent < len(payloads) and sent - checked < window:
            p.send(payloads[sent])
            sent += 1
        while base + checked < len(p.got):
            got, want = p.got[base + checked], payloads[checked]
            assert got == want, f"datagram {checked} differs: {got[:4].hex()} != {want[:4].hex()}"
            checked += 1
        if sent < len(payloads) and sent - checked < window:
            continue
        if checked < len(payloads):
            remaining = deadline - loop.time()
            assert remaining > 0, f"echo stalled at {checked}/{len(payloads)}"
            p.arrived.clear()
            await asyncio.wait_for(p.arrived.wait(), remaining)
    assert len(p.got) == base + len(payloads), "more datagrams came back than were sent"
