"""Real parts for end-to-end tests: relay processes, OpenSSH clients, TCP services.

Everything listens on 127.0.0.1 only; every process started here is stopped by
the fixture that started it. Conditions are polled with a deadline, never slept on.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from relay.admin.client import AdminClient
from relay.config import HostPort

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-admin-token"


async def poll(check: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 20) -> None:
    """Wait until `check()` is true; fail naming `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class AgentSpec:
    agent_id: str
    account: str
    role: str
    key_path: Path
    public: str
    active: bool = True


def make_agent(tmp: Path, agent_id: str, account: str, role: str, active: bool = True) -> AgentSpec:
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp / f"{agent_id}.key"
    path.write_bytes(key.export_private_key())
    path.chmod(0o600)
    public = key.export_public_key().decode().strip()
    return AgentSpec(agent_id, account, role, path, public, active)


def agents_toml(agents: list[AgentSpec]) -> str:
    parts = []
    for a in agents:
        parts.append(
            f'[[agent]]\nid = "{a.agent_id}"\naccount = "{a.account}"\nrole = "{a.role}"\n'
            f'keys = ["{a.public}"]\nactive = {"true" if a.active else "false"}\n'
        )
    return "\n".join(parts)


def free_port_range(count: int) -> tuple[int, int]:
    """A port range below the kernel's ephemeral ports (32768 and up), so none is in use."""
    base = random.randrange(20000, 32000 - count)
    return base, base + count - 1


@dataclass
class Relay:
    """A relay process started from the console script, as an operator runs it."""

    tmp: Path
    agents: list[AgentSpec]
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    ssh_port: int = 0
    admin_port: int = 0
    ports: tuple[int, int] = (0, 0)

    @property
    def config_path(self) -> Path:
        return self.tmp / "relay.toml"

    @property
    def db_path(self) -> Path:
        return self.tmp / "var" / "streams.db"

    def write_config(self) -> None:
        (self.tmp / "agents.toml").write_text(agents_toml(self.agents))
        if self.ports == (0, 0):
            self.ports = free_port_range(50)
        sections: dict[str, dict[str, Any]] = {
            "relay": {
                "ssh_listen": "127.0.0.1:0",
                "public_ports": f"{self.ports[0]}-{self.ports[1]}",
                "keepalive": "5s",
            },
            "admin": {"listen": "127.0.0.1:0", "token": TOKEN},
            "quota": {"low_water": "0", "inactive_grace": "30s"},
            "stream_log": {"interim": "1s", "flush": "200ms"},
        }
        for section, values in self.extra.items():
            sections.setdefault(section, {}).update(values)
        lines = []
        for section, values in sections.items():
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {json.dumps(v)}" for k, v in values.items())
        self.config_path.write_text("\n".join(lines) + "\n")

    async def start(self) -> Relay:
        self.write_config()
        with (self.tmp / "relay.log").open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tools.cli",
                "relay",
                "run",
                "--config",
                str(self.config_path),
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        except TimeoutError:
            raise AssertionError(f"relay did not start: {self.log_text()}") from None
        if not line:
            raise AssertionError(f"relay exited at start: {self.log_text()}")
        ready = json.loads(line)
        self.ssh_port, self.admin_port = ready["ssh_port"], ready["admin"]
        return self

    def log_text(self) -> str:
        path = self.tmp / "relay.log"
        return path.read_text()[-4000:] if path.exists() else ""

    def admin(self) -> AdminClient:
        return AdminClient(HostPort(host="127.0.0.1", port=self.admin_port), TOKEN)

    async def call(self, method: str, *args: Any) -> Any:
        async with self.admin() as client:
            return await getattr(client, method)(*args)

    async def signal(self, sig: int) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), 30)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


class Ssh:
    """A stock OpenSSH client acting as an agent."""

    def __init__(self, relay: Relay, agent: AgentSpec, *args: str, hosts: str = "") -> None:
        self.relay, self.agent, self.args, self.hosts = relay, agent, args, hosts
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr = b""

    def config_file(self) -> Path:
        path = self.relay.tmp / f"ssh_config_{self.agent.agent_id}"
        path.write_text(
            f"Host relay\n  HostName 127.0.0.1\n  Port {self.relay.ssh_port}\n"
            f"  User {self.agent.agent_id}\n  IdentityFile {self.agent.key_path}\n"
            f"{self.hosts}"
            "Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
            "  BatchMode yes\n  IdentitiesOnly yes\n  ExitOnForwardFailure yes\n"
            "  ServerAliveInterval 5\n"
        )
        return path

    async def start(self, *extra: str) -> Ssh:
        self.proc = await asyncio.create_subprocess_exec(
            "ssh",
            "-F",
            str(self.config_file()),
            *extra,
            *self.args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return self

    async def wait_for_line(self, needle: str, timeout: float = 20) -> str:
        """Read stderr until a line contains `needle` (ssh -v prints its forwards)."""
        assert self.proc is not None and self.proc.stderr is not None

        async def read() -> str:
            assert self.proc is not None and self.proc.stderr is not None
            while True:
                line = await self.proc.stderr.readline()
                if not line:
                    raise AssertionError(f"ssh ended before {needle!r}: {self.stderr.decode()}")
                self.stderr += line
                if needle in line.decode(errors="replace"):
                    return line.decode()

        return await asyncio.wait_for(read(), timeout)

    async def finish(self, timeout: float = 20) -> tuple[int, str]:
        """Wait for ssh to exit; return its exit code and everything it printed."""
        assert self.proc is not None and self.proc.stderr is not None
        rest = await asyncio.wait_for(self.proc.stderr.read(), timeout)
        self.stderr += rest
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        return code, self.stderr.decode(errors="replace")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def pattern(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@dataclass
class Conn:
    received: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    eof: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    writer: asyncio.StreamWriter | None = None


class DigestService:
    """A TCP service on 127.0.0.1: sends `send` bytes to each client, hashes what it gets."""

    def __init__(self, send: bytes = b"", chunk: int = 65536, half_close: bool = True) -> None:
        self.send = send
        self.half_close = half_close
        self.chunk = chunk
        self.conns: list[Conn] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> DigestService:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for conn in self.conns:
            if conn.writer is not None:
                conn.writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(writer=writer)
        self.conns.append(conn)
        sender = asyncio.create_task(self._send(writer))
        try:
            while data := await reader.read(65536):
                conn.received += len(data)
                conn.digest.update(data)
            conn.eof.set()
            await sender
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            sender.cancel()
            writer.close()
            conn.closed.set()

    async def _send(self, writer: asyncio.StreamWriter) -> None:
        for i in range(0, len(self.send), self.chunk):
            writer.write(self.send[i : i + self.chunk])
            await writer.drain()
        if self.half_close and writer.can_write_eof():
            writer.write_eof()


async def exchange(port: int, payload: bytes, expect: int, chunk: int = 65536) -> tuple[str, int]:
    """Connect to 127.0.0.1:port, send payload then EOF, read `expect` bytes; digest of them."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    digest = hashlib.sha256()
    got = 0

    async def send() -> None:
        for i in range(0, len(payload), chunk):
            writer.write(payload[i : i + chunk])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    while got < expect:
        data = await reader.read(65536)
        if not data:
            break
        got += len(data)
        digest.update(data)
    await sender
    writer.close()
    return digest.hexdigest(), got


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def env_without_agent() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SSH_AUTH_SOCK", None)
    return env
