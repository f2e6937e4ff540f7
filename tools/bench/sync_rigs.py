"""The billing sync's rigs on 127.0.0.1: a billing API process and a relay process synced to it.

Invariants:
- Both are started through a `Procs`, from the console script as an operator
  runs them, so everything they start is stopped with the section.
- Every billing call is made with the admin token and, for mutations, a fresh
  idempotency key; a call that does not answer 2xx raises, naming the path.
- The relay learns its agents from the billing API only (no agents file), and
  its OpenSSH clients are the bench's stock `ssh` with the forced cipher.
"""

from __future__ import annotations

import itertools
import json
import random
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tools.bench.procs import Child, Procs, free_port
from tools.bench.rigs import ROOT, keygen, ssh_cmd

ADMIN = "bench-billing-admin-0123456789"
RELAY_TOKEN = "bench-relay-token-0123456789"
RELAY_ADMIN = "bench-relay-admin-token"
_keys = itertools.count(1)

BILLING_TOML = """[server]
host = "127.0.0.1"
port = 0
database = "{db}"
admin_token = "{admin}"
maintenance_interval = "1h"

[pricing]
metered_price_per_gb = "0.1"

[[relays]]
id = "relay-1"
token = "{relay}"

[[plans]]
name = "small"
price = "1"
period = "30d"
traffic = "{plan_traffic}"

[[plans]]
name = "pro"
price = "19"
period = "30d"
traffic = "10G"

[[packages]]
name = "pack"
price = "0.5"
traffic = "{package_traffic}"
"""


class BillingRig:
    """`quotarelay billing serve` with a "small" plan, a "pro" plan and one package "pack"."""

    def __init__(
        self, procs: Procs, name: str, *, plan_traffic: int = 10**6, package_traffic: int = 10**6
    ) -> None:
        self.procs, self.name = procs, name
        self.plan_traffic, self.package_traffic = plan_traffic, package_traffic
        self.dir = procs.folder / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.url = ""
        self.child: Child | None = None

    def start(self) -> BillingRig:
        config = self.dir / "billing.toml"
        config.write_text(
            BILLING_TOML.format(
                db=self.dir / "billing.sqlite3",
                admin=ADMIN,
                relay=RELAY_TOKEN,
                plan_traffic=self.plan_traffic,
                package_traffic=self.package_traffic,
            )
        )
        cmd = [sys.executable, "-m", "tools.cli", "billing", "serve", "--config", str(config)]
        self.child = self.procs.start(self.name, cmd, cwd=ROOT)
        self.url = self.child.wait_line("listening on").rsplit(" ", 1)[1].strip()
        return self

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def command(self) -> str:
        assert self.child is not None
        return " ".join(self.child.cmd)

    def api(self, method: str, path: str, body: Any = None, token: str = ADMIN) -> Any:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        if method != "GET":
            headers["Idempotency-Key"] = f"bench-{next(_keys)}-{random.getrandbits(32)}"
        req = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers=headers,
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path}: HTTP {exc.code}: {exc.read()[:300]!r}") from None

    def account(self, name: str, deposit: int) -> str:
        """A new account holding `deposit` millicoins; its id."""
        account_id: str = self.api("POST", "/v1/accounts", {"name": name})["account"]["id"]
        pay = {"account_id": account_id, "payment_id": f"pay-{name}", "amount": deposit}
        self.api("POST", "/v1/deposits", pay)
        return account_id

    def agent(self, account_id: str, name: str, role: str, public_key: str) -> str:
        body = {"name": name, "role": role, "public_keys": [public_key]}
        got = self.api("POST", f"/v1/accounts/{account_id}/agents", body)
        return str(got["id"])

    def buy_package(self, agent_id: str) -> Any:
        return self.api("POST", f"/v1/agents/{agent_id}/packages", {"package": "pack"})


class SyncedRelay:
    """A relay process whose agents and grants come from a `BillingRig`."""

    def __init__(self, procs: Procs, name: str, billing: BillingRig, *, interval: str) -> None:
        self.procs, self.name, self.billing, self.interval = procs, name, billing, interval
        self.dir = procs.folder / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ssh_port = self.admin_port = 0
        self.child: Child | None = None

    def start(self) -> SyncedRelay:
        first = random.randrange(21000, 32000, 50)  # below the ephemeral port range
        (self.dir / "relay.toml").write_text(
            '[relay]\nid = "relay-1"\nssh_listen = "127.0.0.1:0"\n'
            f'public_ports = "{first}-{first + 49}"\n'
            f'[admin]\nlisten = "127.0.0.1:0"\ntoken = "{RELAY_ADMIN}"\n'
            '[quota]\nlow_water = "0"\ninactive_grace = "5m"\n'
            '[stream_log]\njson_lines = ""\n'
            f'[billing]\nurl = "{self.billing.url}"\ntoken = "{RELAY_TOKEN}"\n'
            f'interval = "{self.interval}"\nmin_want = "1M"\nregistry_refresh = "30s"\n'
        )
        cmd = [sys.executable, "-m", "tools.cli", "relay", "run", "--config"]
        cmd.append(str(self.dir / "relay.toml"))
        self.child = self.procs.start(self.name, cmd, cwd=ROOT)
        ready = json.loads(self.child.wait_line('"relay_ready"'))
        self.ssh_port, self.admin_port = int(ready["ssh_port"]), int(ready["admin"])
        return self

    def command(self) -> str:
        assert self.child is not None
        return " ".join(self.child.cmd) + f"   # billing.interval={self.interval}"

    def admin(self, path: str) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}{path}",
            headers={"Authorization": f"Bearer {RELAY_ADMIN}"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def knows(self, *agent_ids: str) -> bool:
        listed = {a.get("agent_id") for a in self.admin("/v1/agents")["agents"]}
        return all(a in listed for a in agent_ids)

    def states(self) -> list[str]:
        return [str(s["state"]) for s in self.admin("/v1/streams")["streams"]]

    def sync_counters(self) -> dict[str, Any]:
        return dict(self.admin("/v1/status").get("sync", {}))

    def ssh(self, label: str, key: Path, user: str, *forward: str) -> Child:
        return self.procs.start(f"{self.name}-{label}", ssh_cmd(key, user, self.ssh_port, *forward))

    def expose_endpoint(self, key: Path, agent_id: str, target: int) -> Child:
        child = self.ssh("endpoint", key, agent_id, "-R", f"svc:22:127.0.0.1:{target}")
        child.wait_line("remote forward success")
        return child

    def support_forward(self, key: Path, agent_id: str) -> tuple[Child, int]:
        port = free_port()
        child = self.ssh("support", key, agent_id, "-L", f"127.0.0.1:{port}:svc:22")
        child.wait_line(f"Local forwarding listening on 127.0.0.1 port {port}")
        child.wait_line("Entering interactive session")
        return child, port


def agent_key(folder: Path, name: str) -> tuple[Path, str]:
    """A key pair for an agent: its private key path and public key line."""
    path = folder / name
    return path, keygen(path)
