"""`quotarelay agent ...` as a real process, for UDP tests: its JSON lines collected.

Invariants:
- It trusts the relay's real host key only (`known_hosts`), and runs without an
  ssh-agent in its environment, so its own key is the only one it can use.
- Every agent process is kept in the list a fixture owns and stopped by it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh

from tests.rigs.keys import AgentSpec
from tests.rigs.relay import ROOT, Relay
from tests.rigs.services import env_without_agent


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


async def start(procs: list[AgentProc], proc: AgentProc, *extra: str) -> AgentProc:
    """Start `proc`, kept in `procs` so the fixture stops it; returns once it is ready."""
    procs.append(proc)
    await proc.start(*extra)
    return await proc.ready()
