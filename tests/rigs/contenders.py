"""The bench's contenders beside the relay, on 127.0.0.1: OpenSSH's sshd and socat.

Invariants:
- Each is started through a `Procs`, so everything it starts is stopped.
- sshd bridges stock `ssh -R` and `ssh -L` clients with `ssh_cmd`'s options and
  forced cipher, so both SSH relays are compared on the same cipher.
- With `GatewayPorts yes` its `-R` port is a public port (the relay's public-port
  contender); every sshd process of a rig (each session's) descends from `pid`.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from tests.rigs.keys import keypair
from tests.rigs.procs import Child, Procs, free_port
from tests.rigs.ssh import CIPHER, REMOTE_READY, local_ready, ssh_cmd
from tests.rigs.waits import wait_for


def listening(port: int, *, any_address: bool = False) -> bool:
    """True once something listens on 127.0.0.1:port (or any address: /proc/net/tcp, tcp6)."""
    want = f":{port:04X}"
    tables = ("tcp", "tcp6") if any_address else ("tcp",)
    for table in tables:
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            parts = line.split()
            if parts[1].endswith(want) and parts[3] == "0A":
                return True
    return False


class SshdRig:
    """OpenSSH's own sshd with its own host key and authorized keys, bridging -R and -L."""

    def __init__(self, procs: Procs, name: str = "sshd", *, gateway_ports: bool = False) -> None:
        self.procs = procs
        self.name = name
        self.gateway_ports = gateway_ports
        self.dir = procs.folder / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.child: Child | None = None

    def start(self) -> SshdRig:
        keypair(self.dir / "host_key")
        pub = keypair(self.dir / "agent")
        (self.dir / "authorized_keys").write_text(pub + "\n")
        config = self.dir / "sshd_config"
        config.write_text(
            f"ListenAddress 127.0.0.1\nHostKey {self.dir / 'host_key'}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
            "PidFile none\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            f"AllowTcpForwarding yes\nGatewayPorts {'yes' if self.gateway_ports else 'no'}\n"
            "X11Forwarding no\n"
            f"Ciphers {CIPHER},chacha20-poly1305@openssh.com,aes128-ctr\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # its privilege separation folder
        self.port = free_port()
        cmd = ["/usr/sbin/sshd", "-D", "-e", "-f", str(config), "-p", str(self.port)]
        self.child = self.procs.start(self.name, cmd)
        wait_for(lambda: listening(self.port), "sshd to listen")
        return self

    def ssh(self, label: str, *forward: str) -> Child:
        return self.procs.start(
            f"{self.name}-{label}", ssh_cmd(self.dir / "agent", self.user, self.port, *forward)
        )

    def bridge(self, target: int) -> tuple[Child, Child, int]:
        """Client `ssh -R 127.0.0.1:P:127.0.0.1:target`, support `ssh -L L:127.0.0.1:P`."""
        mid, port = free_port(), free_port()
        client = self.ssh("client", "-R", f"127.0.0.1:{mid}:127.0.0.1:{target}")
        client.wait_line(REMOTE_READY)
        support = self.ssh("support", "-L", f"127.0.0.1:{port}:127.0.0.1:{mid}")
        for line in local_ready(port):
            support.wait_line(line)
        return client, support, port

    def public(self, target: int) -> tuple[Child, int]:
        """Client `ssh -R P:127.0.0.1:target`: with `GatewayPorts yes`, P is open to all."""
        assert self.gateway_ports, "a public -R port needs GatewayPorts yes"
        port = free_port()
        client = self.ssh("client", "-R", f"{port}:127.0.0.1:{target}")
        client.wait_line(REMOTE_READY)
        wait_for(lambda: listening(port, any_address=True), "sshd's public port")
        return client, port

    @property
    def pid(self) -> int:
        """The listening sshd; each session's processes are its descendants."""
        assert self.child is not None
        return self.child.pid


def socat(procs: Procs, target: int, buffer: int | None) -> tuple[Child, int]:
    """socat as a plain TCP relay to `target`, default buffer or `-b buffer`."""
    port = free_port()
    cmd = ["socat"] + (["-b", str(buffer)] if buffer else [])
    cmd += [f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog=1024"]
    cmd += [f"TCP:127.0.0.1:{target}"]
    child = procs.start(f"socat-{buffer or 'default'}", cmd)
    wait_for(lambda: listening(port), "socat to listen")
    return child, port
