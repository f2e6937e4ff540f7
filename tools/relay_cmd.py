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
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from quota.core.errors import InvalidValue
from quota.core.units import format_size, parse_size
from relay.admin.client import AdminClient, AdminError, parse_admin_target
from relay.config import HostPort, load_config
from relay.errors import ConfigError
from tools.errors import CliError
from tools.log_options import add_log_options

TOKEN_ENV = "QUOTARELAY_ADMIN_TOKEN"

Command = Callable[[AdminClient, argparse.Namespace], Awaitable[Any]]
_ARG_HELP = {"agent": "agent id", "size": "bytes: 1500, 10M, 1Gi", "stream": "stream id"}


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    relay = subparsers.add_parser("relay", help="run the relay or drive a running one")
    commands = relay.add_subparsers(dest="relay_command", required=True, metavar="ACTION")

    run = commands.add_parser("run", help="run the relay in the foreground")
    run.add_argument("--config", default="relay.toml", help="relay config (default relay.toml)")
    add_log_options(run)
    run.set_defaults(func=_run, serves=True)

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


async def _run(args: argparse.Namespace) -> int:
    try:
        config = load_config(Path(args.config))
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    from relay.app import serve

    try:
        return int(await serve(config))
    except ConfigError as exc:
        raise CliError(str(exc)) from None


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
    return f"remaining {view.get('remaining')} bytes (state {view.get('state')})"


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


_AGENT_COLUMNS = (
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
_STREAM_COLUMNS = (
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
    ("PAUSED_MS", "paused_ms"),
    ("PAUSED_FOR", "pause_reason"),
)
_BYTE_KEYS = frozenset({"granted", "used", "remaining", "bytes_up", "bytes_down"})


async def _agents(client: AdminClient, args: argparse.Namespace) -> None:
    agents = await client.agents()
    _emit(args, agents, table(_AGENT_COLUMNS, agents) if agents else "no agents")


async def _streams(client: AdminClient, args: argparse.Namespace) -> None:
    streams = await client.streams()
    _emit(args, streams, table(_STREAM_COLUMNS, streams) if streams else "no live streams")


async def _status(client: AdminClient, args: argparse.Namespace) -> None:
    status = await client.status()
    lines = []
    for key, value in status.items():
        if key == "uptime_ms" and isinstance(value, int):
            key, value = "uptime", duration(value)
        lines.append(f"{key + ':':<10} {value}")
    _emit(args, status, "\n".join(lines))


# -- rendering -----------------------------------------------------------------------


def readable(nbytes: int) -> str:
    """Bytes for people, never rounded up: 1500 -> "1500 (1.5K)", 10**7 -> "10000000 (10M)"."""
    for suffix, scale in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if nbytes >= scale:
            whole, rest = divmod(nbytes, scale)
            short = f"{whole}{suffix}" if rest == 0 else f"{whole}.{rest * 10 // scale}{suffix}"
            return f"{nbytes} ({short})"
    return str(nbytes)


def duration(ms: int) -> str:
    seconds, _ = divmod(ms, 1000)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n]
    return " ".join(shown) if shown else f"{ms}ms"


def table(columns: Sequence[tuple[str, str]], rows: Sequence[dict[str, Any]]) -> str:
    """Aligned columns; numbers right-aligned, byte counts also shown readable."""
    cells = [[_cell(key, row.get(key, "")) for _, key in columns] for row in rows]
    numeric = [all(isinstance(row.get(key), int) for row in rows) for _, key in columns]
    widths = [
        max(len(title), *(len(line[i]) for line in cells)) for i, (title, _) in enumerate(columns)
    ]
    out = []
    for line in [[title for title, _ in columns], *cells]:
        padded = [
            text.rjust(width) if right else text.ljust(width)
            for text, width, right in zip(line, widths, numeric, strict=True)
        ]
        out.append("  ".join(padded).rstrip())
    return "\n".join(out)


def _cell(key: str, value: object) -> str:
    if key in _BYTE_KEYS and isinstance(value, int) and not isinstance(value, bool):
        return readable(value)
    return "-" if value is None else str(value)
