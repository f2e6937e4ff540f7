"""A billing API process (`quotarelay billing serve`) and relays synced with it.

Invariants:
- One config (`BILLING_TOML`): a "small" plan, a "pro" plan and one package
  "pack", relays "relay-1" with `RELAY_TOKEN`, "relay-2" and "relay-3" with
  `relay_token(n)`; the database is a SQLite file in
  the rig's folder unless a database (a PostgreSQL URL, or another file) is
  given: processes given the same one are replicas.
- Every call is made with a token (the admin one unless told) and, for mutations,
  a fresh idempotency key; a call that does not answer 2xx fails, naming the path.
- A synced relay learns its agents from the billing API only (no agents file).
- `Billing` drives it from a test's event loop; `BillingRig` through a bench `Procs`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import signal
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.rigs.keys import AgentSpec, make_agent, write_private
from tests.rigs.procs import Child, Procs
from tests.rigs.relay import ROOT, Relay, RelayRig, Sections

ADMIN = "rig-billing-admin-0123456789"
RELAY_TOKEN = "rig-relay-token-0123456789"
GB = 10**9
_keys = itertools.count(1)

BILLING_TOML = """[server]
host = "127.0.0.1"
port = {port}
database = "{db}"
admin_token = "{admin}"
maintenance_interval = "1h"

[pricing]
metered_price_per_gb = "0.1"

[[relays]]
id = "relay-1"
token = "{relay}"

[[relays]]
id = "relay-2"
token = "{relay}-2"

[[relays]]
id = "relay-3"
token = "{relay}-3"

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


def write_billing_config(
    folder: Path, port: int, plan_traffic: int, package_traffic: int, database: str = ""
) -> Path:
    path = folder / "billing.toml"
    db = database or folder / "billing.sqlite3"
    text = BILLING_TOML.format(
        port=port, db=db, admin=ADMIN, relay=RELAY_TOKEN,
        plan_traffic=plan_traffic, package_traffic=package_traffic,
    )  # fmt: skip
    write_private(path, text.encode())  # it holds tokens: the service refuses a wider mode
    return path


def billing_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "tools.cli", "billing", "serve", "--config", str(config)]


def listening_url(line: str) -> str:
    """The URL in the billing API's `listening on <url>` line."""
    return line.rsplit(" ", 1)[1].strip()


def api_headers(method: str, token: str) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if method != "GET":
        headers["Idempotency-Key"] = f"rig-{next(_keys)}-{random.getrandbits(32)}"
    return headers


def deposit_body(account_id: str, amount: int) -> dict[str, Any]:
    return {"account_id": account_id, "payment_id": f"pay-{next(_keys)}", "amount": amount}


def agent_body(spec: AgentSpec) -> dict[str, Any]:
    return {"name": spec.agent_id, "role": spec.role, "public_keys": [spec.public]}


def relay_token(n: int) -> str:
    """The token of relay `relay-n` in `BILLING_TOML`."""
    return RELAY_TOKEN if n == 1 else f"{RELAY_TOKEN}-{n}"


def synced_sections(url: str, /, **billing_keys: Any) -> Sections:
    """The `[billing]` section of a relay synced with the billing API at `url` (keys override)."""
    return {"billing": {"url": url, "token": RELAY_TOKEN, "min_want": "1M", **billing_keys}}


@dataclass
class Billing:
    """`quotarelay billing serve` for a test, on the test's event loop."""

    tmp: Path
    plan_traffic: int = 4_000_000
    package_traffic: int = 4_000_000
    database: str = ""  # a SQLite file in `tmp` unless given
    port: int = 0
    proc: asyncio.subprocess.Process | None = None
    url: str = ""
    session: aiohttp.ClientSession | None = field(default=None, repr=False)
    metrics_listen: str = ""  # "127.0.0.1:0" serves /metrics; `metrics_port` is where
    metrics_port: int = 0
    extra_toml: str = ""  # more sections, appended to the config as written

    async def start(self) -> Billing:
        config = write_billing_config(
            self.tmp, self.port, self.plan_traffic, self.package_traffic, self.database
        )
        if self.metrics_listen:
            with config.open("a") as f:
                f.write(f'\n[metrics]\nlisten = "{self.metrics_listen}"\n')
        if self.extra_toml:
            with config.open("a") as f:
                f.write("\n" + self.extra_toml)
        with (self.tmp / "billing.log").open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *billing_command(config), cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=log
            )
        assert self.proc.stdout is not None
        line = (await asyncio.wait_for(self.proc.stdout.readline(), 30)).decode()
        assert "listening on" in line, (self.tmp / "billing.log").read_text()[-3000:]
        self.url = listening_url(line)
        self.port = int(self.url.rsplit(":", 1)[1])
        if self.metrics_listen:
            metrics = (await asyncio.wait_for(self.proc.stdout.readline(), 30)).decode()
            self.metrics_port = int(metrics.rsplit(":", 1)[1].split("/")[0])
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        return self

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)
            await asyncio.wait_for(self.proc.wait(), 20)

    async def close(self) -> None:
        await self.stop()
        if self.session is not None:
            await self.session.close()

    async def api(self, method: str, path: str, body: Any = None, token: str = ADMIN) -> Any:
        assert self.session is not None
        headers = api_headers(method, token)
        async with self.session.request(method, self.url + path, json=body, headers=headers) as r:
            data = await r.json()
            assert r.status < 300, f"{method} {path}: {r.status} {data}"
            return data

    async def account(self, name: str, deposit_millicoins: int) -> str:
        created = await self.api("POST", "/v1/accounts", {"name": name})
        account_id: str = created["account"]["id"]
        if deposit_millicoins:
            await self.deposit(account_id, deposit_millicoins)
        return account_id

    async def deposit(self, account_id: str, amount: int) -> Any:
        return await self.api("POST", "/v1/deposits", deposit_body(account_id, amount))

    async def agent(self, tmp: Path, account_id: str, name: str, role: str) -> AgentSpec:
        """Register an agent with a fresh key; its spec carries the billing API's id."""
        spec = make_agent(tmp, name, account_id, role)
        got = await self.api("POST", f"/v1/accounts/{account_id}/agents", agent_body(spec))
        spec.agent_id = got["id"]
        return spec

    async def usage_total(self, account_id: str, agent_id: str) -> int:
        """Bytes billing took in from every relay's reports for this agent (the usage API).

        Not the ledger: its traffic entries are written once per agent and hour.
        """
        got = await self.api("GET", f"/v1/accounts/{account_id}/usage?agent_id={agent_id}")
        return int(got["bytes"])


def synced_relay(tmp: Path, billing: Billing, *, relay: int = 1, **billing_keys: Any) -> Relay:
    """A relay for a test whose agents and grants come from `billing`; `relay-<relay>` in it."""
    keys = {"interval": "200ms", "registry_refresh": "2s", "token": relay_token(relay)}
    extra = synced_sections(billing.url, **{**keys, **billing_keys})
    extra["quota"] = {"low_water": "200K", "inactive_grace": "30s"}
    extra["relay"] = {"id": f"relay-{relay}"}
    return Relay(tmp, [], extra=extra)


class BillingRig:
    """`quotarelay billing serve` for the bench, started through a `Procs`."""

    def __init__(
        self,
        procs: Procs,
        name: str,
        *,
        plan_traffic: int = 10**6,
        package_traffic: int = 10**6,
        database: str = "",
    ) -> None:
        self.procs, self.name = procs, name
        self.plan_traffic, self.package_traffic = plan_traffic, package_traffic
        self.database = database
        self.dir = procs.folder / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.url = ""
        self.child: Child | None = None

    def start(self) -> BillingRig:
        config = write_billing_config(
            self.dir, 0, self.plan_traffic, self.package_traffic, self.database
        )
        self.child = self.procs.start(self.name, billing_command(config), cwd=ROOT)
        self.url = listening_url(self.child.wait_line("listening on"))
        return self

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def command(self) -> str:
        assert self.child is not None
        return " ".join(self.child.cmd)

    def api(self, method: str, path: str, body: Any = None, token: str = ADMIN) -> Any:
        req = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers=api_headers(method, token),
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path}: HTTP {exc.code}: {exc.read()[:300]!r}") from None

    def account(self, name: str, deposit: int) -> str:
        """A new account holding `deposit` millicoins; its id."""
        account_id: str = self.api("POST", "/v1/accounts", {"name": name})["account"]["id"]
        self.api("POST", "/v1/deposits", deposit_body(account_id, deposit))
        return account_id

    def agent(self, folder: Path, account_id: str, name: str, role: str) -> AgentSpec:
        """Register an agent with a fresh key; its spec carries the billing API's id."""
        spec = make_agent(folder, name, account_id, role)
        got = self.api("POST", f"/v1/accounts/{account_id}/agents", agent_body(spec))
        spec.agent_id = str(got["id"])
        return spec

    def buy_package(self, agent_id: str) -> Any:
        return self.api("POST", f"/v1/agents/{agent_id}/packages", {"package": "pack"})


def synced_rig(procs: Procs, name: str, billing: BillingRig, *, interval: str) -> RelayRig:
    """A relay for the bench whose agents and grants come from `billing`."""
    sections = synced_sections(billing.url, interval=interval, registry_refresh="30s")
    sections["relay"] = {"id": "relay-1"}
    sections["quota"] = {"low_water": "0", "inactive_grace": "5m"}
    sections["stream_log"] = {"json_lines": ""}
    note = f"billing.interval={interval}"
    return RelayRig(procs, name, agents=[], sections=sections, loop=None, note=note)
