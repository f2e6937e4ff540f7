"""Stock OpenSSH clients acting as agents: one set of options, two ways to run them.

Invariants:
- Every client runs with `SSH_OPTIONS` (no host key prompt, keys only, fail when a
  forward fails): tests through a config file (`Ssh`), the bench on the command
  line with no config file and one forced cipher (`ssh_cmd`).
- A forward is ready when `ssh -v` says so (`REMOTE_READY`, `local_ready`); both
  the tests and the bench wait for the same lines.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from tests.rigs.keys import AgentSpec

if TYPE_CHECKING:
    from tests.rigs.procs import Child
    from tests.rigs.relay import Relay

CIPHER = "aes128-gcm@openssh.com"
SSH_OPTIONS = {
    "StrictHostKeyChecking": "no",
    "UserKnownHostsFile": "/dev/null",
    "BatchMode": "yes",
    "IdentitiesOnly": "yes",
    "ExitOnForwardFailure": "yes",
}
REMOTE_READY = "remote forward success"


def local_ready(port: int) -> tuple[str, str]:
    """The `ssh -v` lines that say a `-L` forward on 127.0.0.1:port is listening and live."""
    return f"Local forwarding listening on 127.0.0.1 port {port}", "Entering interactive session"


def ssh_cmd(key: Path, user: str, port: int, *forward: str) -> list[str]:
    """`ssh -N -v` to 127.0.0.1:port as `user`, no config file, the forced `CIPHER`."""
    options = [arg for k, v in SSH_OPTIONS.items() for arg in ("-o", f"{k}={v}")]
    return [
        "ssh", "-F", "none", "-N", "-v", "-i", str(key), "-p", str(port), "-l", user,
        "-c", CIPHER, *options, *forward, "127.0.0.1",
    ]  # fmt: skip


def cipher_of(child: Child) -> str:
    """The cipher an `ssh -v` client negotiated, from its own log."""
    line = child.wait_line("cipher:", timeout=20)
    return line.split("cipher:", 1)[1].split()[0]


class Ssh:
    """A stock OpenSSH client acting as an agent, started on the running event loop."""

    def __init__(self, relay: Relay, agent: AgentSpec, *args: str, hosts: str = "") -> None:
        self.relay, self.agent, self.args, self.hosts = relay, agent, args, hosts
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr = b""

    def config_file(self) -> Path:
        path = self.relay.tmp / f"ssh_config_{self.agent.agent_id}"
        options = "".join(f"  {k} {v}\n" for k, v in SSH_OPTIONS.items())
        path.write_text(
            f"Host relay\n  HostName 127.0.0.1\n  Port {self.relay.ssh_port}\n"
            f"  User {self.agent.agent_id}\n  IdentityFile {self.agent.key_path}\n"
            f"{self.hosts}"
            f"Host *\n{options}  ServerAliveInterval 5\n"
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


async def expose(relay: Relay, agent: AgentSpec, spec: str, clients: list[Ssh]) -> Ssh:
    """`ssh -N -R spec relay` as a client agent; returns once the relay confirmed it."""
    ssh = Ssh(relay, agent, "-N", "-R", spec, "relay")
    clients.append(ssh)
    await ssh.start("-v")
    await ssh.wait_for_line(REMOTE_READY)
    return ssh


async def local_forward(
    relay: Relay, agent: AgentSpec, port: int, target: str, clients: list[Ssh]
) -> Ssh:
    """`ssh -N -L port:target relay` as a support agent; returns once it listens."""
    ssh = Ssh(relay, agent, "-N", "-L", f"127.0.0.1:{port}:{target}", "relay")
    clients.append(ssh)
    await ssh.start("-v")
    for line in local_ready(port):
        await ssh.wait_for_line(line)
    return ssh
