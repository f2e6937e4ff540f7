"""`quotarelay billing ...`: run the billing API, and talk to a running one.

`serve --config F` runs the service. The client commands (account, agent,
plan, subscribe, deposit, package, ledger) take `--url` and `--token` (or
QUOTARELAY_BILLING_URL / QUOTARELAY_BILLING_TOKEN) and print a summary, or the
API's JSON answer with `--json`. Amounts are coin ("19", "0.125"), sizes are
"10G"-style; both go through the shared parsers, never through floats. Every
mutation carries an idempotency key (`--key`, random by default), so a retried
command never applies twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import uuid
from typing import Any

import aiohttp

from quota.core.errors import InvalidValue
from quota.core.money import format_coin, parse_coin
from quota.core.units import parse_size
from tools.errors import CliError
from tools.log_options import add_log_options

URL_ENV = "QUOTARELAY_BILLING_URL"
TOKEN_ENV = "QUOTARELAY_BILLING_TOKEN"
MONEY_FIELDS = {"balance", "amount", "price", "balance_after", "topup_limit", "topup_spent"}
TIMEOUT = aiohttp.ClientTimeout(total=15)


async def serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from quota.billing.config import load_config
    from quota.billing.errors import BillingError
    from quota.billing.server import BillingServer
    from quota.billing.startup import check_secrets

    try:
        config = load_config(Path(args.config))
        check_secrets(config, Path(args.config), demo=False, env=os.environ)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        async with BillingServer(config) as server:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            print(f"billing API listening on {server.url}", flush=True)
            if server.metrics_port is not None:
                where = f"{config.metrics.host}:{server.metrics_port}"
                print(f"billing metrics on http://{where}/metrics", flush=True)
            await stop.wait()
    except BillingError as exc:
        raise CliError(str(exc)) from exc
    return 0


def _coin(text: str) -> int:
    try:
        return parse_coin(text)
    except InvalidValue as exc:
        raise CliError(str(exc)) from exc


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except InvalidValue as exc:
        raise CliError(str(exc)) from exc


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise CliError(f"expected on or off, got {text!r}")
    return text == "on"


async def request(
    args: argparse.Namespace,
    method: str,
    path: str,
    body: Any = None,
    params: dict[str, str] | None = None,
) -> Any:
    """Call the API; turn every failure into a one-line `CliError`."""
    url = (args.url or os.environ.get(URL_ENV) or "").rstrip("/")
    token = args.token or os.environ.get(TOKEN_ENV)
    if not url or not token:
        raise CliError(f"set --url and --token (or {URL_ENV} and {TOKEN_ENV})")
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": args.key or str(uuid.uuid4())}
    try:
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as session,
            session.request(method, url + path, json=body, headers=headers, params=params) as resp,
        ):
            payload = await resp.json(content_type=None)
            if resp.status >= 300:
                message = payload.get("error") if isinstance(payload, dict) else payload
                raise CliError(f"{resp.status}: {message}")
            return payload
    except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
        raise CliError(f"cannot reach the billing API at {url}: {exc!r}") from exc


def _human(value: Any, indent: str = "") -> list[str]:
    lines = []
    for key, item in value.items():
        if isinstance(item, dict):
            lines += [f"{indent}{key}:", *_human(item, indent + "  ")]
        elif isinstance(item, list) and item and isinstance(item[0], dict):
            lines.append(f"{indent}{key}:")
            for row in item:
                lines += [*_human(row, indent + "  "), ""]
        elif key in MONEY_FIELDS and isinstance(item, int):
            lines.append(f"{indent}{key}: {format_coin(item)}")
        else:
            lines.append(f"{indent}{key}: {item}")
    return lines


def _show(args: argparse.Namespace, payload: Any) -> int:
    if args.json:
        print(json.dumps(payload, indent=2, sort_keys=True))
    else:
        print("\n".join(_human(payload)).rstrip())
    return 0


async def _call(args: argparse.Namespace) -> int:
    method, path, body, params = args.build(args)
    return _show(args, await request(args, method, path, body, params))


def _settings(a: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if a.auto_renew is not None:
        body["auto_renew"] = _on_off(a.auto_renew)
    if a.metered is not None:
        body["allow_metered"] = _on_off(a.metered)
    if a.topup_package is not None:
        body["topup_package"] = a.topup_package
    if a.topup_limit is not None:
        body["topup_limit"] = _coin(a.topup_limit)
    if a.topup_below is not None:
        body["topup_below"] = _size(a.topup_below)
    if not body:
        raise CliError("nothing to change: give at least one option")
    return body


def _ledger_params(a: argparse.Namespace) -> dict[str, str]:
    params = {"limit": str(a.limit), "after": str(a.after)}
    if a.agent:
        params["agent_id"] = a.agent
    if a.kind:
        params["kind"] = a.kind
    return params


def _client_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"billing API URL (default ${URL_ENV})")
    common.add_argument("--token", help=f"bearer token (default ${TOKEN_ENV})")
    common.add_argument("--json", action="store_true", help="print the API's JSON answer")
    common.add_argument("--key", help="idempotency key (default: a random one)")
    return common


def _leaf(
    group: Any, name: str, common: argparse.ArgumentParser, help_text: str, build: Any
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(name, parents=[common], help=help_text)
    parser.set_defaults(func=_call, build=build)
    return parser


def _register_account(sub: Any, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("account", help="accounts").add_subparsers(required=True)
    p = _leaf(
        group,
        "create",
        common,
        "create an account (admin); prints its token",
        lambda a: ("POST", "/v1/accounts", {"name": a.name}, None),
    )
    p.add_argument("name")
    p = _leaf(
        group,
        "show",
        common,
        "balance and state",
        lambda a: ("GET", f"/v1/accounts/{a.account}", None, None),
    )
    p.add_argument("account")


def _register_agent(sub: Any, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("agent", help="agents").add_subparsers(required=True)
    p = _leaf(
        group,
        "register",
        common,
        "register an agent",
        lambda a: (
            "POST",
            f"/v1/accounts/{a.account}/agents",
            {"name": a.name, "role": a.role, "public_keys": a.key_line or []},
            None,
        ),
    )
    p.add_argument("account")
    p.add_argument("name")
    p.add_argument("--role", choices=("client", "support", "dual"), default="client")
    p.add_argument(
        "--public-key",
        dest="key_line",
        action="append",
        help="an OpenSSH public key line (repeat for more)",
    )
    p = _leaf(
        group,
        "list",
        common,
        "the account's agents",
        lambda a: ("GET", f"/v1/accounts/{a.account}/agents", None, None),
    )
    p.add_argument("account")
    p = _leaf(
        group, "show", common, "one agent", lambda a: ("GET", f"/v1/agents/{a.agent}", None, None)
    )
    p.add_argument("agent")
    p = _leaf(
        group,
        "set",
        common,
        "billing settings",
        lambda a: ("PATCH", f"/v1/agents/{a.agent}", _settings(a), None),
    )
    p.add_argument("agent")
    p.add_argument("--auto-renew", choices=("on", "off"))
    p.add_argument("--metered", choices=("on", "off"), help="draw traffic from the balance")
    p.add_argument("--topup-package", help='auto top-up package ("" turns it off)')
    p.add_argument("--topup-limit", help="coin per period auto top-up may spend")
    p.add_argument("--topup-below", help="buy when traffic would fall below this size")
    p = _leaf(
        group,
        "revoke-key",
        common,
        "revoke an SSH key",
        lambda a: ("DELETE", f"/v1/agents/{a.agent}/keys/{a.key_id}", None, None),
    )
    p.add_argument("agent")
    p.add_argument("key_id")


def _register_money(sub: Any, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("plan", help="plans").add_subparsers(required=True)
    _leaf(
        group,
        "list",
        common,
        "plans, packages and prices",
        lambda a: ("GET", "/v1/catalogue", None, None),
    )
    p = _leaf(
        group,
        "change",
        common,
        "change an agent's plan (prorated)",
        lambda a: ("POST", f"/v1/agents/{a.agent}/plan", {"plan": a.plan}, None),
    )
    p.add_argument("agent")
    p.add_argument("plan")
    p = _leaf(
        sub,
        "subscribe",
        common,
        "subscribe an agent to a plan",
        lambda a: (
            "POST",
            f"/v1/agents/{a.agent}/subscription",
            {"plan": a.plan, "auto_renew": not a.no_auto_renew},
            None,
        ),
    )
    p.add_argument("agent")
    p.add_argument("plan")
    p.add_argument("--no-auto-renew", action="store_true")
    p = _leaf(
        sub,
        "deposit",
        common,
        "record a payment (admin / payment webhook)",
        lambda a: (
            "POST",
            "/v1/deposits",
            {
                "account_id": a.account,
                "payment_id": a.payment_id,
                "amount": _coin(a.amount),
                **({"intent_id": a.intent} if a.intent else {}),
            },
            None,
        ),
    )
    p.add_argument("account")
    p.add_argument("amount", help='coin, e.g. "50" or "0.125"')
    p.add_argument("--payment-id", required=True, help="the provider's payment id")
    p.add_argument("--intent", help="the deposit intent this payment answers")
    group = sub.add_parser("package", help="traffic packages").add_subparsers(required=True)
    p = _leaf(
        group,
        "buy",
        common,
        "buy a traffic package for an agent",
        lambda a: ("POST", f"/v1/agents/{a.agent}/packages", {"package": a.package}, None),
    )
    p.add_argument("agent")
    p.add_argument("package")
    p = _leaf(
        sub,
        "ledger",
        common,
        "ledger entries, oldest first",
        lambda a: ("GET", f"/v1/accounts/{a.account}/ledger", None, _ledger_params(a)),
    )
    p.add_argument("account")
    p.add_argument("--agent")
    p.add_argument("--kind")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--after", type=int, default=0, help="next_cursor of the previous page")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `billing` and its subcommands."""
    billing = subparsers.add_parser("billing", help="the central billing API")
    sub = billing.add_subparsers(dest="billing_command", required=True, metavar="COMMAND")
    p = sub.add_parser("serve", help="run the billing API")
    p.add_argument("--config", required=True, help="billing TOML file")
    add_log_options(p)
    p.set_defaults(func=serve, serves=True)
    common = _client_options()
    _register_account(sub, common)
    _register_agent(sub, common)
    _register_money(sub, common)
    _register_console_link(sub, common)


async def _console_link(args: argparse.Namespace) -> int:
    """Print a one-time sign-in URL for the web console (first line: the URL alone)."""
    import datetime as dt

    payload = await request(args, "POST", f"/v1/accounts/{args.account}/console-links")
    if args.json:
        return _show(args, payload)
    base = (args.url or os.environ.get(URL_ENV) or "").rstrip("/")
    until = dt.datetime.fromtimestamp(payload["expires_at"] // 1000, dt.UTC)
    print(f"{base}{payload['path']}")
    print(f"works once, until {until:%Y-%m-%d %H:%M:%S} UTC")
    return 0


def _register_console_link(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "console-link", parents=[common], help="a one-time sign-in link to the web console"
    )
    p.add_argument("account", help="account id (acc_...)")
    p.set_defaults(func=_console_link)
