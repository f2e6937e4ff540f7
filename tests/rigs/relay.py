"""A relay process started from the console script, as an operator runs it.

Invariants:
- Its folder holds `agents.toml` and `relay.toml` (mode 0600: it holds the admin
  token), written from sections by `write_relay_files`; the relay listens on
  127.0.0.1, SSH and admin on port 0, public ports in a range below the
  kernel's ephemeral ports, so none is in use.
- It is ready once it printed its `relay_ready` line, which names both ports.
- `Relay` drives it from a test's event loop and reads the ready line on stdout;
  `RelayRig` drives it through a bench `Procs` and reads it from the log.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.admin.client import AdminClient
from relay.config import HostPort
from tests.rigs.keys import AgentSpec, agents_toml, make_agent, write_private
from tests.rigs.procs import Child, Procs, free_port
from tests.rigs.ssh import REMOTE_READY, local_ready, ssh_cmd

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-admin-token"
BIG_GRANT = 2**50
Sections = dict[str, dict[str, Any]]


def free_port_range(count: int) -> tuple[int, int]:
    """A port range below the kernel's ephemeral ports (32768 and up), so none is in use."""
    base = random.randrange(20000, 32000 - count)
    return base, base + count - 1


def write_relay_files(
    folder: Path, agents: list[AgentSpec], ports: tuple[int, int], extra: Sections
) -> Path:
    """Write the agents file and the relay's config (`extra` over the base); its path."""
    (folder / "agents.toml").write_text(agents_toml(agents))
    sections: Sections = {
        "relay": {"ssh_listen": "127.0.0.1:0", "public_ports": f"{ports[0]}-{ports[1]}"},
        "admin": {"listen": "127.0.0.1:0", "token": TOKEN},
    }
    for section, values in extra.items():
        sections.setdefault(section, {}).update(values)
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in values.items())
    path = folder / "relay.toml"
    write_private(path, ("\n".join(lines) + "\n").encode())  # it holds the admin token
    return path


def relay_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "tools.cli", "relay", "run", "--config", str(config)]


def ready_ports(line: str | bytes) -> tuple[int, int]:
    """The SSH and admin ports named by the relay's ready line."""
    ready = json.loads(line)
    return int(ready["ssh_port"]), int(str(ready["admin"]).rpartition(":")[2])


# Fair shares raised for the bench's load sections (64 public streams and 10,000 idle
# streams come from one address, above the defaults meant for strangers).
ROOMY_SHARES = {
    "channels_per_connection": 100_000,
    "streams_per_tunnel": 100_000,
    "connections_per_source": 100_000,
}

# Settings that make tests quick: no low-water prefetch, short log flushes.
TEST_SECTIONS: Sections = {
    "relay": {"keepalive": "5s"},
    "quota": {"low_water": "0", "inactive_grace": "30s"},
    "stream_log": {"interim": "1s", "flush": "200ms"},
}


@dataclass
class Relay:
    """A relay process for a test, on the test's event loop; `extra` goes over `TEST_SECTIONS`."""

    tmp: Path
    agents: list[AgentSpec]
    extra: Sections = field(default_factory=dict)
    prefix: list[str] = field(default_factory=list)  # e.g. ["prlimit", "--nofile=1024:1024"]
    env: dict[str, str] = field(default_factory=dict)  # over this process's environment
    proc: asyncio.subprocess.Process | None = None
    ssh_port: int = 0
    admin_port: int = 0
    ports: tuple[int, int] = (0, 0)
    ready: dict[str, Any] = field(default_factory=dict)  # its relay_ready line

    @property
    def config_path(self) -> Path:
        return self.tmp / "relay.toml"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def db_path(self) -> Path:
        return self.tmp / "var" / "streams.db"

    def write_config(self) -> None:
        if self.ports == (0, 0):
            self.ports = free_port_range(50)
        sections = {k: dict(v) for k, v in TEST_SECTIONS.items()}
        for section, values in self.extra.items():
            sections.setdefault(section, {}).update(values)
        write_relay_files(self.tmp, self.agents, self.ports, sections)

    async def start(self) -> Relay:
        self.write_config()
        with (self.tmp / "relay.log").open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.prefix,
                *relay_command(self.config_path),
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env={**os.environ, **self.env},
            )
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        except TimeoutError:
            raise AssertionError(f"relay did not start: {self.log_text()}") from None
        if not line:
            raise AssertionError(f"relay exited at start: {self.log_text()}")
        self.ssh_port, self.admin_port = ready_ports(line)
        self.ready = json.loads(line)
        return self

    def log_text(self) -> str:
        path = self.tmp / "relay.log"
        return path.read_text()[-4000:] if path.exists() else ""

    def admin(self) -> AdminClient:
        # generous: tests load the relay on purpose (floods) and share the cores
        return AdminClient(HostPort(host="127.0.0.1", port=self.admin_port), TOKEN, timeout_s=30)

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


class RelayRig:
    """A relay process for the bench, started through a `Procs`.

    Without `agents` it gets one paying client agent ("owner") and one support
    agent ("tech") of account "bench"; with `agents=[]` it learns them elsewhere
    (from the billing API). Without `sections` it meters (or not) and keeps no JSON
    lines log. It runs as one process (`relay.workers = 1`) unless `sections` sets
    `relay.workers`. `loop` sets QUOTARELAY_LOOP; None keeps the relay's default.
    """

    def __init__(
        self,
        procs: Procs,
        name: str,
        *,
        agents: list[AgentSpec] | None = None,
        sections: Sections | None = None,
        metering: bool = True,
        loop: str | None = "uvloop",
        note: str | None = None,
        roomy: bool = False,
        prefix: list[str] | None = None,
    ) -> None:
        self.procs, self.name, self.loop = procs, name, loop
        self.prefix = prefix or []  # e.g. valgrind, to count the relay's instructions
        self.note = f"metering={metering}" if note is None else note
        self.dir = procs.folder / name
        self.dir.mkdir(parents=True, exist_ok=True)
        if agents is None:
            agents = [
                make_agent(self.dir, "owner", "bench", "client"),
                make_agent(self.dir, "tech", "bench", "support"),
            ]
        self.agents = {a.agent_id: a for a in agents}
        self.sections = sections or {
            "quota": {"metering": metering},
            "stream_log": {"json_lines": ""},
        }
        if roomy:  # an operator who lets one source carry a benchmark's load
            self.sections = {**self.sections, "shares": dict(ROOMY_SHARES)}
        # one process unless a section says otherwise: the bench's figures are the byte
        # path's; its `workers` section sets 1 and 2 itself
        relay = {"workers": 1, **self.sections.get("relay", {})}
        self.sections = {**self.sections, "relay": relay}
        self.ssh_port = self.admin_port = 0
        self.child: Child | None = None

    @property
    def metering(self) -> bool:
        return bool(self.sections.get("quota", {}).get("metering", True))

    def start(self) -> RelayRig:
        first = random.randrange(21000, 32000, 50)  # below the ephemeral port range
        agents, ports = list(self.agents.values()), (first, first + 49)
        config = write_relay_files(self.dir, agents, ports, self.sections)
        env = {"QUOTARELAY_LOOP": self.loop} if self.loop else {}
        cmd = [*self.prefix, *relay_command(config)]
        self.child = self.procs.start(self.name, cmd, env=env, cwd=ROOT)
        ready = self.child.wait_line('"relay_ready"', timeout=120 if self.prefix else 30)
        self.ssh_port, self.admin_port = ready_ports(ready)
        return self

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def command(self) -> str:
        assert self.child is not None
        env = f"QUOTARELAY_LOOP={self.loop} " if self.loop else ""
        return env + " ".join(self.child.cmd) + (f"   # {self.note}" if self.note else "")

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def grant(self, nbytes: int, agent: str = "owner") -> Any:
        return self.admin("POST", f"/v1/agents/{agent}/grant", {"bytes": nbytes})

    def status(self) -> Any:
        return self.admin("GET", "/v1/status")

    def knows(self, *agent_ids: str) -> bool:
        listed = {a.get("agent_id") for a in self.admin("GET", "/v1/agents")["agents"]}
        return all(a in listed for a in agent_ids)

    def states(self) -> list[str]:
        return [str(s["state"]) for s in self.admin("GET", "/v1/streams")["streams"]]

    def sync_counters(self) -> dict[str, Any]:
        return dict(self.status().get("sync", {}))

    def ssh(self, label: str, agent: AgentSpec, *forward: str) -> Child:
        cmd = ssh_cmd(agent.key_path, agent.agent_id, self.ssh_port, *forward)
        return self.procs.start(f"{self.name}-{label}", cmd)

    def expose_public(self, target: int) -> tuple[Child, int]:
        """`ssh -R 0:127.0.0.1:target` as the owner; returns the client and the public port."""
        child = self.ssh("public", self.agents["owner"], "-R", f"0:127.0.0.1:{target}")
        line = child.wait_line("Allocated port")
        return child, int(line.split("Allocated port", 1)[1].split()[0])

    def expose_endpoint(
        self, target: int, name: str = "svc", agent: AgentSpec | None = None
    ) -> Child:
        owner = agent or self.agents["owner"]
        child = self.ssh(f"endpoint-{name}", owner, "-R", f"{name}:22:127.0.0.1:{target}")
        child.wait_line(REMOTE_READY)
        return child

    def support_forward(
        self, name: str = "svc", agent: AgentSpec | None = None
    ) -> tuple[Child, int]:
        """`ssh -L port:name:22` as the support agent; returns the client and its port."""
        port = free_port()
        tech = agent or self.agents["tech"]
        child = self.ssh(f"support-{name}", tech, "-L", f"127.0.0.1:{port}:{name}:22")
        for line in local_ready(port):
            child.wait_line(line)
        return child, port
