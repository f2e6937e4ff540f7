"""`quotarelay up`: the billing API and a relay synced with it, with a demo account.

Everything lives under one folder (default ./var/demo): the billing API's config
and SQLite file, tokens, agent keys, the relay's config, journal and stream log,
a known_hosts file. On first start it creates an account with a balance, a
client agent subscribed to a plan and a support agent; later starts reuse them.
Both services run in this process, with a small HTTP service on the demo's
service port (unless something already listens there) for the tunnels to
reach; Ctrl-C stops them all cleanly. The banner's balance and traffic are read
from the billing API at each start, never remembered from the first. The folder is made
with mode 0700 and every file in it with mode 0600 (`quota.private_files`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh

from quota.core.errors import InvalidValue
from quota.core.money import format_coin
from quota.core.tokens import DEMO_PREFIX
from quota.private_files import create_private, private_folder, replace_private
from relay.config import load_config
from relay.errors import ConfigError
from relay.hub.hub import Hub
from tools.demo_service import DemoService
from tools.errors import CliError

BILLING_TOML = """\
[server]
host = "127.0.0.1"
port = {port}
database = "{database}"
admin_token = "{admin}"
maintenance_interval = "1m"

[pricing]
metered_price_per_gb = "0.1"

[[relays]]
id = "demo-relay"
token = "{relay}"

[[plans]]
name = "demo"
price = "5"
period = "30d"
traffic = "{plan_traffic}"

[[packages]]
name = "{package}"
price = "0.5"
traffic = "{package}"
"""

# Small on purpose: a download of a few MB through the demo reaches the end of the
# plan in seconds, so the pause (and the resume a package brings) can be seen.
DEMO_PLAN_TRAFFIC = "4M"
DEMO_PACKAGE = "4M"

RELAY_TOML = """\
[relay]
id = "demo-relay"
ssh_listen = "127.0.0.1:{ssh}"
host_key = "relay_host_key"

[admin]
listen = "127.0.0.1:{admin}"
token_file = "admin.token"

[billing]
url = "http://127.0.0.1:{billing}"
token_file = "relay.token"
journal = "journal.db"

[stream_log]
path = "streams.db"
json_lines = "streams.jsonl"
interim = "10s"
"""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser("up", help="start the billing API and a relay with a demo account")
    p.add_argument("--dir", default="var/demo", help="where config, keys and data go")
    p.add_argument("--ssh-port", type=int, default=2222, help="the relay's SSH port")
    p.add_argument("--admin-port", type=int, default=8022, help="the relay's admin API port")
    p.add_argument("--billing-port", type=int, default=8480, help="the billing API's port")
    p.add_argument(
        "--service-port",
        type=int,
        default=8080,
        help="the demo service's local port (started here unless something listens there)",
    )
    p.add_argument("--local-port", type=int, default=9090, help="the support agent's local port")
    p.set_defaults(func=_up, serves=True)


def _secret(path: Path) -> str:
    if not path.exists():
        create_private(path, (DEMO_PREFIX + secrets.token_urlsafe(24) + "\n").encode())
    return path.read_text().strip()


def _key(path: Path) -> str:
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519")
        create_private(path, key.export_private_key())
    return str(asyncssh.read_private_key(str(path)).export_public_key().decode().strip())


def prepare(folder: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """Write configs, tokens, keys and known_hosts; return (billing.toml, relay.toml)."""
    private_folder(folder)
    admin, relay_token = _secret(folder / "billing-admin.token"), _secret(folder / "relay.token")
    _secret(folder / "admin.token")
    billing = folder / "billing.toml"
    text = BILLING_TOML.format(
        port=args.billing_port,
        admin=admin,
        relay=relay_token,
        database=folder / "billing.sqlite3",
        plan_traffic=DEMO_PLAN_TRAFFIC,
        package=DEMO_PACKAGE,
    )
    replace_private(billing, text.encode())
    relay = folder / "relay.toml"
    text = RELAY_TOML.format(ssh=args.ssh_port, admin=args.admin_port, billing=args.billing_port)
    replace_private(relay, text.encode())
    from relay.ssh.options import load_host_key

    public = load_host_key(folder / "relay_host_key").export_public_key().decode().strip()
    replace_private(folder / "known_hosts", f"[127.0.0.1]:{args.ssh_port} {public}\n".encode())
    return billing, relay


async def demo_account(folder: Path, url: str, admin: str) -> dict[str, str]:
    """Create the demo account and agents once; their ids are kept in state.json."""
    state_file = folder / "state.json"
    if state_file.exists():
        return dict(json.loads(state_file.read_text()))
    headers = {"Authorization": f"Bearer {admin}"}
    async with aiohttp.ClientSession(headers=headers) as http:

        async def call(method: str, path: str, body: Any, key: str) -> Any:
            async with http.request(
                method, url + path, json=body, headers={"Idempotency-Key": key}
            ) as resp:
                data = await resp.json()
                if resp.status >= 300:
                    raise CliError(f"setting up the demo account: {path}: {data.get('error')}")
                return data

        account = (await call("POST", "/v1/accounts", {"name": "demo"}, "up-account"))["account"]
        await call(
            "POST",
            "/v1/deposits",
            {"account_id": account["id"], "payment_id": "up-demo-deposit", "amount": 20_000},
            "up-deposit",
        )
        state = {"account": account["id"]}
        for role in ("client", "support"):
            body = {"name": role, "role": role, "public_keys": [_key(folder / f"{role}.key")]}
            agent = await call("POST", f"/v1/accounts/{account['id']}/agents", body, f"up-{role}")
            state[role] = agent["id"]
        await call("POST", f"/v1/agents/{state['client']}/subscription", {"plan": "demo"}, "up-sub")
    replace_private(state_file, json.dumps(state).encode())
    return state


@dataclass(frozen=True, slots=True, kw_only=True)
class Facts:
    """What the banner tells, read from the billing API at each start (never remembered)."""

    balance: int  # millicoins
    remaining: int  # the client agent's traffic left, bytes
    service: bool  # the demo service was started here (else something else listens there)
    bin_dir: Path  # where the `quotarelay` script of this install lives


async def read_facts(url: str, admin: str, state: dict[str, str]) -> tuple[int, int]:
    """The demo account's balance and its client agent's remaining traffic, as billing has them."""
    headers = {"Authorization": f"Bearer {admin}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{url}/v1/accounts/{state['account']}") as resp:
            account = await resp.json()
        async with http.get(f"{url}/v1/agents/{state['client']}") as resp:
            agent = await resp.json()
    return int(account["balance"]), int(agent["traffic_remaining"])


def path_hint(bin_dir: Path) -> str:
    """How to run `quotarelay` bare: already possible, or the PATH line to paste."""
    if shutil.which("quotarelay") == str(bin_dir / "quotarelay"):
        return "`quotarelay` is on your PATH."
    return f'To run `quotarelay` bare, put it on your PATH: export PATH="{bin_dir}:$PATH"'


def instructions(
    folder: Path, args: argparse.Namespace, state: dict[str, str], facts: Facts
) -> str:
    svc, local, billing_url = (
        args.service_port,
        args.local_port,
        f"http://127.0.0.1:{args.billing_port}",
    )

    def ssh(role: str, forward: str) -> str:
        return shlex.join(
            [
                "ssh", "-i", str(folder / f"{role}.key"), "-p", str(args.ssh_port),
                "-o", f"UserKnownHostsFile={folder / 'known_hosts'}", "-o", "IdentitiesOnly=yes",
                "-N", *forward.split(), f"{state[role]}@127.0.0.1",
            ]
        )  # fmt: skip

    env = (
        f"QUOTARELAY_BILLING_URL={billing_url} "
        f"QUOTARELAY_BILLING_TOKEN=$(cat {shlex.quote(str(folder / 'billing-admin.token'))})"
    )
    service = (
        f"The demo service (started here) listens on 127.0.0.1:{svc}:"
        f" GET / says hello, GET /bytes/6M sends 6 MB."
        if facts.service
        else f"127.0.0.1:{svc} was already taken: the demo reaches whatever listens there."
    )
    return "\n".join(
        [
            f"quotarelay is up: billing API on {billing_url},"
            f" relay SSH on 127.0.0.1:{args.ssh_port}.",
            f"Demo account {state['account']}: balance {format_coin(facts.balance)} coin.",
            f"Client agent {state['client']}: plan 'demo' (5 coin / 30 days,"
            f" {DEMO_PLAN_TRAFFIC}B included), {facts.remaining:,} bytes of traffic left.",
            service,
            "",
            "Paste these in other terminals:",
            f"1. The client agent exposes localhost:{svc} as endpoint 'web':",
            f"   {ssh('client', f'-R web:80:localhost:{svc}')}",
            f"2. The support agent reaches it on its own localhost:{local}:",
            f"   {ssh('support', f'-L {local}:web:80')}",
            "3. Fetch through the relay; past the plan's traffic the download pauses:",
            f"   curl -o /dev/null http://127.0.0.1:{local}/bytes/6M",
            f"4. Buy a {DEMO_PACKAGE}B package (0.5 coin): the paused download resumes at once:",
            f"   {env} quotarelay billing package buy {state['client']} {DEMO_PACKAGE}",
            "5. Or the client agent opens a public port (the relay prints which):",
            f"   {ssh('client', f'-R 0:localhost:{svc}')}",
            "",
            "Watch and pay:",
            f"   quotarelay streams --follow --config {shlex.quote(str(folder / 'relay.toml'))}",
            f"   {env} quotarelay billing ledger {state['account']}",
            "",
            path_hint(facts.bin_dir),
            "Ctrl-C stops the relay, the billing API and the demo service.",
        ]
    )


async def _up(args: argparse.Namespace) -> int:
    from quota.billing.config import load_config as load_billing
    from quota.billing.errors import BillingError
    from quota.billing.server import BillingServer
    from quota.billing.startup import check_secrets
    from relay.app import serve

    folder = Path(args.dir).resolve()
    try:
        billing_path, relay_path = prepare(folder, args)
        billing_config = load_billing(billing_path, env={})
        check_secrets(billing_config, billing_path, demo=True, env={})
        relay_config = load_config(relay_path)
    except (ConfigError, InvalidValue, BillingError) as exc:
        raise CliError(str(exc)) from None
    try:
        async with (
            BillingServer(billing_config) as billing,
            DemoService(args.service_port) as service,
        ):
            admin = billing_config.admin_token
            state = await demo_account(folder, billing.url, admin)

            async def ready(hub: Hub) -> None:
                for _ in range(100):  # the agents arrive with the relay's first registry fetch
                    if hub.registry.get(state["client"]) is not None:
                        break
                    await asyncio.sleep(0.05)
                balance, remaining = await read_facts(billing.url, admin, state)
                bin_dir = Path(sys.executable).parent  # a venv keeps its scripts there
                facts = Facts(
                    balance=balance, remaining=remaining, service=service.running, bin_dir=bin_dir
                )
                print(instructions(folder, args, state, facts), flush=True)

            return await serve(relay_config, on_ready=ready, demo=True)
    except (ConfigError, BillingError) as exc:
        raise CliError(str(exc)) from None
