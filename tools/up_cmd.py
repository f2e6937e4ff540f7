"""`quotarelay up`: the billing API and a relay synced with it, with a demo account.

Everything lives under one folder (default ./var/demo): the billing API's config
and SQLite file, tokens, agent keys, the relay's config, journal and stream log,
a known_hosts file. On first start it creates an account with a balance, a
client agent subscribed to a plan and a support agent; later starts reuse them.
Both services run in this process; Ctrl-C stops both cleanly. The folder is made
with mode 0700 and every file in it with mode 0600 (`quota.private_files`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shlex
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh

from quota.core.errors import InvalidValue
from quota.core.tokens import DEMO_PREFIX
from quota.private_files import create_private, private_folder, replace_private
from relay.config import load_config
from relay.errors import ConfigError
from relay.hub.hub import Hub
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
traffic = "1G"

[[packages]]
name = "1G"
price = "0.5"
traffic = "1G"
"""

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
    p.add_argument("--service-port", type=int, default=8080, help="the demo service's local port")
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
        port=args.billing_port, admin=admin, relay=relay_token, database=folder / "billing.sqlite3"
    )
    replace_private(billing, text.encode())
    relay = folder / "relay.toml"
    text = RELAY_TOML.format(ssh=args.ssh_port, admin=args.admin_port, billing=args.billing_port)
    replace_private(relay, text.encode())
    from relay.app import load_host_key

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


def instructions(folder: Path, args: argparse.Namespace, state: dict[str, str]) -> str:
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
    return "\n".join(
        [
            f"quotarelay is up: billing API on {billing_url},"
            f" relay SSH on 127.0.0.1:{args.ssh_port}.",
            f"Demo account {state['account']}: 20 coin, client agent {state['client']} on plan",
            "'demo' (5 coin / 30 days, 1 GB included). Paste these in other terminals:",
            "",
            f"1. The client agent exposes localhost:{svc} as endpoint 'web':",
            f"   {ssh('client', f'-R web:80:localhost:{svc}')}",
            f"2. The support agent reaches it on its own localhost:{local}:",
            f"   {ssh('support', f'-L {local}:web:80')}",
            "3. Or the client agent opens a public port (the relay prints which):",
            f"   {ssh('client', f'-R 0:localhost:{svc}')}",
            "",
            "Watch and pay:",
            f"   .venv/bin/quotarelay streams --config {shlex.quote(str(folder / 'relay.toml'))}",
            f"   {env} .venv/bin/quotarelay billing ledger {state['account']}",
            "",
            "Ctrl-C stops both.",
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
        async with BillingServer(billing_config) as billing:
            state = await demo_account(folder, billing.url, billing_config.admin_token)

            async def ready(hub: Hub) -> None:
                for _ in range(100):  # the agents arrive with the relay's first registry fetch
                    if hub.registry.get(state["client"]) is not None:
                        break
                    await asyncio.sleep(0.05)
                print(instructions(folder, args, state), flush=True)

            return await serve(relay_config, on_ready=ready, demo=True)
    except (ConfigError, BillingError) as exc:
        raise CliError(str(exc)) from None
