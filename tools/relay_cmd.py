"""`quotarelay relay ...`: run the relay, and drive a running one through its admin API.

Invariants:
- The admin address and token come from `--admin`/`--token` (or the env var
  QUOTARELAY_ADMIN_TOKEN) when `--admin` is given, else from the relay config
  (`--config`, default `relay.toml` in the working folder).
- Sizes go through `quota.core.units.parse_size`, the parser the config uses.
- Every failure a user can act on (bad size, unreadable config, relay not
  reachable, refused call) ends as one `CliError` line; `--json` prints the API's
  answer as it came.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from quota.core.errors import InvalidValue
from quota.core.units import format_size, parse_size
from relay.admin.client import AdminClient, AdminError, parse_admin_target
from relay.config import HostPort, load_config
from relay.errors import ConfigError
from tools.errors import WHAT_TO_DO, CliError
from tools.log_options import add_log_options
from tools.render import block, check_report, column, problems_of, size, table

TOKEN_ENV = "QUOTARELAY_ADMIN_TOKEN"

Command = Callable[[AdminClient, argparse.Namespace], Awaitable[Any]]
_ARG_HELP = {"agent": "agent id", "size": "bytes: 1500, 10M, 1Gi", "stream": "stream id"}


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    relay = subparsers.add_parser("relay", help="run the relay or drive a running one")
    commands = relay.add_subparsers(
        dest="relay_command", required=True, metavar="ACTION", help=WHAT_TO_DO
    )

    run = commands.add_parser("run", help="run the relay in the foreground")
    run.add_argument("--config", default="relay.toml", help="relay config (default relay.toml)")
    add_log_options(run)
    run.set_defaults(func=_run, serves=True, prefork=_prefork)

    check = commands.add_parser(
        "check-config", help="report every problem of a relay config, then exit"
    )
    check.add_argument("file", help="relay TOML file")
    check.set_defaults(func=_check_config)

    admin = argparse.ArgumentParser(add_help=False)
    admin.add_argument("--config", default="relay.toml", help="relay config (default relay.toml)")
    admin.add_argument("--admin", metavar="URL", help="admin API: http://HOST:PORT or unix:PATH")
    admin.add_argument("--token", help=f"admin token (default: env {TOKEN_ENV})")
    admin.add_argument("--json", action="store_true", help="print the API's JSON answer")

    def add(name: str, help_: str, command: Command, *args: str) -> None:
        parser = commands.add_parser(name, help=help_, parents=[admin])
        for arg in args:
            parser.add_argument(arg, help=_ARG_HELP[arg])
        parser.set_defaults(func=_admin_call(command))

    add("grant", "grant bytes to an agent", _grant, "agent", "size")
    add("revoke", "take back unused granted bytes", _revoke, "agent", "size")
    add("activate", "let an agent's traffic flow again", _activate, "agent")
    add("deactivate", "pause an agent's traffic and refuse new tunnels", _deactivate, "agent")
    add("agents", "list agents with their buckets", _agents)
    add("streams", "list live streams", _streams)
    add("pause", "pause a live stream (operator) until resumed", _pause, "stream")
    add("resume", "lift an operator's pause of a live stream", _resume, "stream")
    add("status", "show the relay's status", _status)


def _prefork(args: argparse.Namespace) -> None:
    """Before the loop: read the config and fork its workers (`relay.app.prefork`)."""
    try:
        args.config_read = load_config(Path(args.config))
        from relay.app import prefork

        args.preforked = prefork(args.config_read)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


async def _run(args: argparse.Namespace) -> int:
    config = getattr(args, "config_read", None)
    try:
        if config is None:
            config = load_config(Path(args.config))
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    from relay.app import serve

    try:
        return int(await serve(config, preforked=getattr(args, "preforked", None)))
    except ConfigError as exc:
        raise CliError(str(exc)) from None


async def _check_config(args: argparse.Namespace) -> int:
    """Every problem of a relay config at once (its secrets' too); exit 0 or 2."""
    from relay.startup import check_secrets

    path = Path(args.file)
    problems: list[str] = []
    try:
        check_secrets(load_config(path), demo=False)
    except ConfigError as exc:
        problems = problems_of(str(exc))
    return check_report(str(path), problems)


# -- talking to the admin API --------------------------------------------------------


def _admin_call(command: Command) -> Callable[[argparse.Namespace], Awaitable[int]]:
    async def call(args: argparse.Namespace) -> int:
        target, token = _target(args)
        try:
            async with AdminClient(target, token) as client:
                await command(client, args)
        except AdminError as exc:
            raise CliError(str(exc)) from None
        return 0

    return call


def _target(args: argparse.Namespace) -> tuple[HostPort | Path, str]:
    if args.admin:
        try:
            target = parse_admin_target(args.admin)
        except AdminError as exc:
            raise CliError(str(exc)) from None
        return target, args.token if args.token is not None else os.environ.get(TOKEN_ENV, "")
    path = Path(args.config)
    if not path.exists():
        raise CliError(f"config file not found: {path} (give --config FILE or --admin URL)")
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    return config.admin_listen, args.token if args.token is not None else config.admin_token


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except InvalidValue as exc:
        raise CliError(str(exc)) from None  # the core's message names the text


def _emit(args: argparse.Namespace, data: object, human: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else human)


def _summary(view: dict[str, Any]) -> str:
    return f"{size(view.get('remaining', 0))} bytes remaining, state {view.get('state')}"


async def _grant(client: AdminClient, args: argparse.Namespace) -> None:
    nbytes = _size(args.size)
    view = await client.grant(args.agent, nbytes)
    _emit(args, view, f"granted {format_size(nbytes)} to {args.agent}: {_summary(view)}")


async def _revoke(client: AdminClient, args: argparse.Namespace) -> None:
    nbytes = _size(args.size)
    view = await client.revoke(args.agent, nbytes)
    _emit(args, view, f"revoked up to {format_size(nbytes)} from {args.agent}: {_summary(view)}")


async def _activate(client: AdminClient, args: argparse.Namespace) -> None:
    view = await client.set_active(args.agent, True)
    _emit(args, view, f"activated {args.agent}: {_summary(view)}")


async def _pause(client: AdminClient, args: argparse.Namespace) -> None:
    view = await client.pause_stream(args.stream, True)
    _emit(args, view, f"paused {args.stream}: state {view['state']}")


async def _resume(client: AdminClient, args: argparse.Namespace) -> None:
    view = await client.pause_stream(args.stream, False)
    _emit(args, view, f"resumed {args.stream}: state {view['state']}")


async def _deactivate(client: AdminClient, args: argparse.Namespace) -> None:
    view = await client.set_active(args.agent, False)
    _emit(args, view, f"deactivated {args.agent}: {_summary(view)}")


_AGENT_COLUMNS = tuple(
    column(header, key)
    for header, key in (
        ("AGENT", "agent_id"),
        ("ACCOUNT", "account"),
        ("ROLE", "role"),
        ("STATE", "state"),
        ("GRANTED", "granted"),
        ("USED", "used"),
        ("REMAINING", "remaining"),
        ("STREAMS", "streams"),
        ("WAITING", "waiting"),
    )
)
_STREAM_COLUMNS = tuple(
    column(header, key)
    for header, key in (
        ("STREAM", "stream_id"),
        ("TUNNEL", "tunnel_id"),
        ("AGENT", "agent_id"),
        ("KIND", "kind"),
        ("PEER", "peer"),
        ("TARGET", "target"),
        ("STATE", "state"),
        ("UP", "bytes_up"),
        ("DOWN", "bytes_down"),
        ("PAUSES", "pauses"),
        ("PAUSED", "paused_ms"),
        ("PAUSED_FOR", "pause_reason"),
    )
)


async def _agents(client: AdminClient, args: argparse.Namespace) -> None:
    agents = await client.agents()
    _emit(args, agents, table(_AGENT_COLUMNS, agents) if agents else "no agents")


async def _streams(client: AdminClient, args: argparse.Namespace) -> None:
    streams = await client.streams()
    _emit(args, streams, table(_STREAM_COLUMNS, streams) if streams else "no live streams")


async def _status(client: AdminClient, args: argparse.Namespace) -> None:
    status = await client.status()
    _emit(args, status, block(status))
