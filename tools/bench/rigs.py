"""The contenders, each set up on 127.0.0.1: a quotarelay process, OpenSSH sshd, socat.

Invariants:
- Each rig is started through a `Procs`, so everything it starts is stopped.
- Every OpenSSH client is stock `ssh` with no config file, forced to one cipher
  (`CIPHER`) so both relays are compared on the same cipher; the cipher each
  client negotiated is read back from its own `-v` output.
- Every command a rig runs is recorded verbatim for the report.
"""

from __future__ import annotations

import json
import os
import pwd
import random
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from tools.bench.procs import Child, Procs, free_port, wait_for

CIPHER = "aes128-gcm@openssh.com"
TOKEN = "bench-admin-token"
ROOT = Path(__file__).resolve().parents[2]
BIG_GRANT = 2**50


def keygen(path: Path) -> str:
    """Make an ed25519 key pair at `path`; return the public key line."""
    if not path.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return path.with_suffix(".pub").read_text().strip()


def ssh_cmd(key: Path, user: str, port: int, *forward: str) -> list[str]:
    return [
        "ssh",
        "-F",
        "none",
        "-N",
        "-v",
        "-i",
        str(key),
        "-p",
        str(port),
        "-l",
        user,
        "-c",
        CIPHER,
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "ExitOnForwardFailure=yes",
        *forward,
        "127.0.0.1",
    ]


def cipher_of(child: Child) -> str:
    """The cipher an `ssh -v` client negotiated, from its own log."""
    line = child.wait_line("cipher:", timeout=20)
    return line.split("cipher:", 1)[1].split()[0]


def listening(port: int) -> bool:
    """True once something listens on 127.0.0.1:port (read from /proc/net/tcp)."""
    want = f":{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[1].endswith(want) and parts[3] == "0A":
            return True
    return False


class RelayRig:
    """A quotarelay process with one paying client agent ("owner") and one support agent."""

    def __init__(
        self, procs: Procs, name: str, *, metering: bool = True, loop: str = "uvloop"
    ) -> None:
        self.procs, self.name, self.metering, self.loop = procs, name, metering, loop
        self.dir = procs.folder / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ssh_port = self.admin_port = 0
        self.child: Child | None = None

    def start(self) -> RelayRig:
        owner_key, tech_key = self.dir / "owner", self.dir / "tech"
        agents = [("owner", "client", keygen(owner_key)), ("tech", "support", keygen(tech_key))]
        (self.dir / "agents.toml").write_text(
            "".join(
                f'[[agent]]\nid = "{i}"\naccount = "bench"\nrole = "{r}"\nkeys = ["{k}"]\n\n'
                for i, r, k in agents
            )
        )
        first = random.randrange(21000, 32000, 50)  # below the ephemeral port range
        (self.dir / "relay.toml").write_text(
            "[relay]\n"
            'ssh_listen = "127.0.0.1:0"\n'
            f'public_ports = "{first}-{first + 49}"\n'
            "[admin]\n"
            f'listen = "127.0.0.1:0"\ntoken = "{TOKEN}"\n'
            "[quota]\n"
            f"metering = {'true' if self.metering else 'false'}\n"
            "[stream_log]\n"
            'json_lines = ""\n'
        )
        cmd = [sys.executable, "-m", "tools.cli", "relay", "run", "--config"]
        cmd.append(str(self.dir / "relay.toml"))
        env = {"QUOTARELAY_LOOP": self.loop}
        self.child = self.procs.start(self.name, cmd, env=env, cwd=ROOT)
        ready = json.loads(self.child.wait_line('"relay_ready"'))
        self.ssh_port, self.admin_port = int(ready["ssh_port"]), int(ready["admin"])
        return self

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def command(self) -> str:
        assert self.child is not None
        env = f"QUOTARELAY_LOOP={self.loop} "
        return env + " ".join(self.child.cmd) + f"   # metering={self.metering}"

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

    def ssh(self, label: str, agent: str, *forward: str) -> Child:
        return self.procs.start(
            f"{self.name}-{label}", ssh_cmd(self.dir / agent, agent, self.ssh_port, *forward)
        )

    def expose_public(self, target: int) -> tuple[Child, int]:
        """`ssh -R 0:127.0.0.1:target` as the owner; returns the client and the public port."""
        child = self.ssh("public", "owner", "-R", f"0:127.0.0.1:{target}")
        line = child.wait_line("Allocated port")
        return child, int(line.split("Allocated port", 1)[1].split()[0])

    def expose_endpoint(self, target: int, name: str = "svc") -> Child:
        child = self.ssh(f"endpoint-{name}", "owner", "-R", f"{name}:22:127.0.0.1:{target}")
        child.wait_line("remote forward success")
        return child

    def support_forward(self, name: str = "svc") -> tuple[Child, int]:
        """`ssh -L port:name:22` as the support agent; returns the client and its port."""
        port = free_port()
        child = self.ssh(f"support-{name}", "tech", "-L", f"127.0.0.1:{port}:{name}:22")
        child.wait_line(f"Local forwarding listening on 127.0.0.1 port {port}")
        child.wait_line("Entering interactive session")
        return child, port


class SshdRig:
    """OpenSSH's own sshd with its own host key and authorized keys, bridging -R and -L."""

    def __init__(self, procs: Procs) -> None:
        self.procs = procs
        self.dir = procs.folder / "sshd"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.child: Child | None = None

    def start(self) -> SshdRig:
        keygen(self.dir / "host_key")
        pub = keygen(self.dir / "agent")
        (self.dir / "authorized_keys").write_text(pub + "\n")
        config = self.dir / "sshd_config"
        config.write_text(
            f"ListenAddress 127.0.0.1\nHostKey {self.dir / 'host_key'}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
            "PidFile none\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "AllowTcpForwarding yes\nGatewayPorts no\nX11Forwarding no\n"
            f"Ciphers {CIPHER},chacha20-poly1305@openssh.com,aes128-ctr\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # its privilege separation folder
        self.port = free_port()
        cmd = ["/usr/sbin/sshd", "-D", "-e", "-f", str(config), "-p", str(self.port)]
        self.child = self.procs.start("sshd", cmd)
        wait_for(lambda: listening(self.port), "sshd to listen")
        return self

    def ssh(self, label: str, *forward: str) -> Child:
        return self.procs.start(
            f"sshd-{label}", ssh_cmd(self.dir / "agent", self.user, self.port, *forward)
        )

    def bridge(self, target: int) -> tuple[Child, Child, int]:
        """Client `ssh -R 127.0.0.1:P:127.0.0.1:target`, support `ssh -L L:127.0.0.1:P`."""
        mid, port = free_port(), free_port()
        client = self.ssh("client", "-R", f"127.0.0.1:{mid}:127.0.0.1:{target}")
        client.wait_line("remote forward success")
        support = self.ssh("support", "-L", f"127.0.0.1:{port}:127.0.0.1:{mid}")
        support.wait_line(f"Local forwarding listening on 127.0.0.1 port {port}")
        support.wait_line("Entering interactive session")
        return client, support, port


def socat(procs: Procs, target: int, buffer: int | None) -> tuple[Child, int]:
    """socat as a plain TCP relay to `target`, default buffer or `-b buffer`."""
    port = free_port()
    cmd = ["socat"] + (["-b", str(buffer)] if buffer else [])
    cmd += [f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog=1024"]
    cmd += [f"TCP:127.0.0.1:{target}"]
    child = procs.start(f"socat-{buffer or 'default'}", cmd)
    wait_for(lambda: listening(port), "socat to listen")
    return child, port
