"""`quotarelay billing ...`: run the billing API, and talk to a running one.

`serve --config F` runs the service; `check-config F` reports every problem
of a config at once. The client commands (account, agent, plan, subscribe,
deposit, package, ledger, usage) take `--url` and `--token` (or the command line's own
QUOTARELAY_BILLING_URL / QUOTARELAY_BILLING_TOKEN) and print tables with
readable sizes, coin and times (`tools.render`), or the API's JSON answer,
unchanged, with `--json`. Amounts are coin ("19", "0.125"), sizes are
"10G"-style; both go through the shared parsers, never through floats. Every
mutation, and only a mutation, carries an idempotency key (`--key`, random by
default), so a retried command never applies twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from quota.contract import wire
from quota.core.errors import InvalidValue
from quota.core.money import parse_coin
from quota.core.units import parse_size
from tools import billing_views as views
from tools.errors import WHAT_TO_DO, CliError
from tools.log_options import add_log_options
from tools.render import TIME, check_report, column, parse_when, problems_of, table

URL_ENV = "QUOTARELAY_BILLING_URL"
TOKEN_ENV = "QUOTARELAY_BILLING_TOKEN"
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
    headers = {"Authorization": f"Bearer {token}"}
    if method != "GET":  # only a change has something to apply once
        headers["Idempotency-Key"] = getattr(args, "key", None) or str(uuid.uuid4())
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


def _show(args: argparse.Namespace, payload: Any) -> int:
    if args.json:
        print(json.dumps(payload, indent=2, sort_keys=True))
    else:
        print(args.human(payload))
    return 0


@dataclass(frozen=True, slots=True)
class Call:
    """One API call of a command, built from its parsed arguments."""

    method: str
    path: Callable[[argparse.Namespace], str]
    body: Callable[[argparse.Namespace], Any] | None = None
    params: Callable[[argparse.Namespace], dict[str, str]] | None = None


async def _call(args: argparse.Namespace) -> int:
    call: Call = args.call
    body = call.body(args) if call.body else None
    params = call.params(args) if call.params else None
    return _show(args, await request(args, call.method, call.path(args), body, params))


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
    now = _now_ms()
    for flag, text in (("since", a.since), ("until", a.until)):
        if text is not None:
            params[flag] = str(parse_when(text, now, f"--{flag}"))
    return params


def _usage_params(a: argparse.Namespace) -> dict[str, str]:
    params = {}
    now = _now_ms()
    for flag, text in (("since", a.since), ("until", a.until)):
        if text is not None:
            params[flag] = str(parse_when(text, now, f"--{flag}"))
    for name, value in (("agent_id", a.agent), ("tunnel_id", a.tunnel)):
        if value is not None:
            params[name] = value
    return params


def _usage_view(p: dict[str, Any]) -> str:
    """One line per agent and tunnel, then the account's total."""
    rows = [{**t, "bytes_total": t["bytes"]} for t in p["tunnels"]]
    total = {"agent_id": "total", "tunnel_id": "", "bytes_total": p["bytes"]}
    total |= {"tunnel_seconds": p["tunnel_seconds"], "first_at": None, "last_at": None}
    rows.append({**total, "reports": sum(t["reports"] for t in p["tunnels"])})
    columns = [
        column("AGENT", "agent_id"),
        column("TUNNEL", "tunnel_id"),
        column("BYTES", "bytes_total"),
        column("SECONDS", "tunnel_seconds"),
        column("REPORTS", "reports"),
        ("FIRST", "first_at", TIME),
        ("LAST", "last_at", TIME),
    ]
    return table(columns, rows)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _client_options(*, keyed: bool) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"billing API URL (default ${URL_ENV})")
    common.add_argument("--token", help=f"bearer token (default ${TOKEN_ENV})")
    common.add_argument("--json", action="store_true", help="print the API's JSON answer")
    if keyed:
        common.add_argument(
            "--key", help="idempotency key: a retry with the same key applies once (default: new)"
        )
    return common


class _Parents:
    """The client options of a command that reads and of one that changes something."""

    def __init__(self) -> None:
        self.read = _client_options(keyed=False)
        self.change = _client_options(keyed=True)


def _leaf(
    group: Any, name: str, parents: _Parents, help_text: str, call: Call, human: views.Human
) -> argparse.ArgumentParser:
    common = parents.read if call.method == "GET" else parents.change
    parser: argparse.ArgumentParser = group.add_parser(
        name, parents=[common], help=help_text, description=help_text[0].upper() + help_text[1:]
    )
    parser.set_defaults(func=_call, call=call, human=human)
    return parser


ACCOUNT = "account id (acc_...)"
AGENT = "agent id (agt_...)"


def _register_account(sub: Any, parents: _Parents) -> None:
    group = sub.add_parser("account", help="create and show accounts").add_subparsers(
        required=True, metavar="ACTION", help=WHAT_TO_DO
    )
    p = _leaf(
        group,
        "create",
        parents,
        "create an account (admin); prints its token once",
        Call("POST", lambda a: "/v1/accounts", lambda a: {"name": a.name}),
        views.account_created,
    )
    p.add_argument("name", help="the account's name")
    p = _leaf(
        group,
        "show",
        parents,
        "an account's balance and state",
        Call("GET", lambda a: f"/v1/accounts/{a.account}"),
        views.account,
    )
    p.add_argument("account", help=ACCOUNT)


def _register_agent(sub: Any, parents: _Parents) -> None:
    group = sub.add_parser("agent", help="register, list, show and set agents").add_subparsers(
        required=True, metavar="ACTION", help=WHAT_TO_DO
    )
    p = _leaf(
        group,
        "register",
        parents,
        "register an agent",
        Call(
            "POST",
            lambda a: f"/v1/accounts/{a.account}/agents",
            lambda a: {"name": a.name, "role": a.role, "public_keys": a.key_line or []},
        ),
        views.agent,
    )
    p.add_argument("account", help=ACCOUNT)
    p.add_argument("name", help="the agent's name in the account")
    p.add_argument(
        "--role",
        choices=("client", "support", "dual"),
        default="client",
        help="client (exposes, pays), support (reaches), or dual (default client)",
    )
    p.add_argument(
        "--public-key",
        dest="key_line",
        action="append",
        help="an OpenSSH public key line (repeat for more)",
    )
    p = _leaf(
        group,
        "list",
        parents,
        "the account's agents",
        Call("GET", lambda a: f"/v1/accounts/{a.account}/agents"),
        views.agents,
    )
    p.add_argument("account", help=ACCOUNT)
    show = Call("GET", lambda a: f"/v1/agents/{a.agent}")
    p = _leaf(group, "show", parents, "one agent", show, views.agent)
    p.add_argument("agent", help=AGENT)
    p = _leaf(
        group,
        "set",
        parents,
        "change an agent's billing settings",
        Call("PATCH", lambda a: f"/v1/agents/{a.agent}", _settings),
        views.agent,
    )
    p.add_argument("agent", help=AGENT)
    p.add_argument("--auto-renew", choices=("on", "off"), help="renew the plan at period end")
    p.add_argument("--metered", choices=("on", "off"), help="draw traffic from the balance")
    p.add_argument("--topup-package", help='auto top-up package ("" turns it off)')
    p.add_argument("--topup-limit", help="coin per period auto top-up may spend")
    p.add_argument("--topup-below", help="buy when traffic would fall below this size")
    p = _leaf(
        group,
        "revoke-key",
        parents,
        "revoke an SSH key",
        Call("DELETE", lambda a: f"/v1/agents/{a.agent}/keys/{a.key_id}"),
        views.agent,
    )
    p.add_argument("agent", help=AGENT)
    p.add_argument("key_id", help="the key's id (KEY in `agent show`)")


def _register_money(sub: Any, parents: _Parents) -> None:
    group = sub.add_parser("plan", help="plans and plan changes").add_subparsers(
        required=True, metavar="ACTION", help=WHAT_TO_DO
    )
    _leaf(
        group,
        "list",
        parents,
        "plans, packages and prices",
        Call("GET", lambda a: "/v1/catalogue"),
        views.catalogue,
    )
    p = _leaf(
        group,
        "change",
        parents,
        "change an agent's plan (prorated)",
        Call("POST", lambda a: f"/v1/agents/{a.agent}/plan", lambda a: {"plan": a.plan}),
        views.charge,
    )
    p.add_argument("agent", help=AGENT)
    p.add_argument("plan", help="the new plan's name (see `plan list`)")
    p = _leaf(
        sub,
        "subscribe",
        parents,
        "subscribe an agent to a plan",
        Call(
            "POST",
            lambda a: f"/v1/agents/{a.agent}/subscription",
            lambda a: {"plan": a.plan, "auto_renew": not a.no_auto_renew},
        ),
        views.charge,
    )
    p.add_argument("agent", help=AGENT)
    p.add_argument("plan", help="the plan's name (see `plan list`)")
    p.add_argument("--no-auto-renew", action="store_true", help="let the plan end after a period")
    p = _leaf(
        sub,
        "deposit",
        parents,
        "record a payment (admin / payment webhook)",
        Call(
            "POST",
            lambda a: "/v1/deposits",
            lambda a: {
                "account_id": a.account,
                "payment_id": a.payment_id,
                "amount": _coin(a.amount),
                **({"intent_id": a.intent} if a.intent else {}),
            },
        ),
        views.deposit,
    )
    p.add_argument("account", help=ACCOUNT)
    p.add_argument("amount", help='coin, e.g. "50" or "0.125"')
    p.add_argument("--payment-id", required=True, help="the provider's payment id")
    p.add_argument("--intent", help="the deposit intent this payment answers")
    group = sub.add_parser("package", help="traffic packages").add_subparsers(
        required=True, metavar="ACTION", help=WHAT_TO_DO
    )
    p = _leaf(
        group,
        "buy",
        parents,
        "buy a traffic package for an agent",
        Call("POST", lambda a: f"/v1/agents/{a.agent}/packages", lambda a: {"package": a.package}),
        views.charge,
    )
    p.add_argument("agent", help=AGENT)
    p.add_argument("package", help="the package's name (see `plan list`)")
    p = _leaf(
        sub,
        "ledger",
        parents,
        "an account's ledger entries, oldest first",
        Call("GET", lambda a: f"/v1/accounts/{a.account}/ledger", params=_ledger_params),
        views.ledger,
    )
    p.add_argument("account", help=ACCOUNT)
    p.add_argument("--agent", metavar="ID", help="only entries of this agent")
    p.add_argument(
        "--kind",
        choices=wire.KINDS,
        metavar="KIND",
        help=f"only entries of this kind: {', '.join(wire.KINDS)}",
    )
    p.add_argument("--since", metavar="WHEN", help="entries at or after: 2h, 7d, or ISO-8601")
    p.add_argument("--until", metavar="WHEN", help="entries before: 2h, 7d, or ISO-8601")
    p.add_argument("--limit", type=int, default=100, help="at most this many entries (100)")
    p.add_argument("--after", type=int, default=0, help="next_cursor of the previous page")
    p = _leaf(
        sub,
        "usage",
        parents,
        "an account's usage per agent and tunnel over a time range, from every relay report",
        Call("GET", lambda a: f"/v1/accounts/{a.account}/usage", params=_usage_params),
        _usage_view,
    )
    p.add_argument("account", help=ACCOUNT)
    p.add_argument("--since", metavar="WHEN", help="usage at or after: 2h, 7d, or ISO-8601")
    p.add_argument("--until", metavar="WHEN", help="usage before: 2h, 7d, or ISO-8601")
    p.add_argument("--agent", metavar="ID", help="only this agent")
    p.add_argument("--tunnel", metavar="ID", help="only this tunnel")


async def check_config(args: argparse.Namespace) -> int:
    """Every problem of a billing config at once (the secrets' too); exit 0 or 2."""
    from pathlib import Path

    from quota.billing.config import load_config
    from quota.billing.errors import ConfigError
    from quota.billing.startup import check_secrets

    path = Path(args.file)
    problems: list[str] = []
    try:
        config = load_config(path)
        check_secrets(config, path, demo=False, env=os.environ)
    except ConfigError as exc:
        problems = problems_of(str(exc))
    return check_report(str(path), problems)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `billing` and its subcommands."""
    billing = subparsers.add_parser("billing", help="run the billing API, or talk to one")
    sub = billing.add_subparsers(
        dest="billing_command", required=True, metavar="COMMAND", help=WHAT_TO_DO
    )
    p = sub.add_parser("serve", help="run the billing API")
    p.add_argument("--config", required=True, help="billing TOML file")
    add_log_options(p)
    p.set_defaults(func=serve, serves=True)
    p = sub.add_parser("check-config", help="report every problem of a billing config, then exit")
    p.add_argument("file", help="billing TOML file")
    p.set_defaults(func=check_config)
    parents = _Parents()
    _register_account(sub, parents)
    _register_agent(sub, parents)
    _register_money(sub, parents)
    _register_console_link(sub, parents)


async def _console_link(args: argparse.Namespace) -> int:
    """Print a one-time sign-in URL for the web console (first line: the URL alone)."""
    payload = await request(args, "POST", f"/v1/accounts/{args.account}/console-links")
    if args.json:
        return _show(args, payload)
    import datetime as dt

    base = (args.url or os.environ.get(URL_ENV) or "").rstrip("/")
    until = dt.datetime.fromtimestamp(payload["expires_at"] // 1000, dt.UTC)
    print(f"{base}{payload['path']}")
    print(f"works once, until {until:%Y-%m-%d %H:%M:%S} UTC")
    return 0


def _register_console_link(sub: Any, parents: _Parents) -> None:
    p = sub.add_parser(
        "console-link", parents=[parents.change], help="a one-time sign-in link to the web console"
    )
    p.add_argument("account", help=ACCOUNT)
    p.set_defaults(func=_console_link)
