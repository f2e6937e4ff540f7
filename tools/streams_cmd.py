"""`quotarelay streams`: list, total and follow the relay's stream log.

Invariants:
- Read-only: the command never creates or writes the stream log, so it is safe
  to run against a live relay's database.
- Byte figures are printed exact (no rounding), so they can be checked against
  the billing API's usage to the byte; `--json` prints every stored field.
- Every mistake a user can make (a missing file, a bad `--since`, flags that do
  not go together) ends in one CliError line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from contextlib import aclosing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from relay.config import load_config
from relay.errors import ConfigError
from relay.streamlog.query import PAUSED_BY, follow, list_streams, totals
from relay.streamlog.writer import StreamLogError, iso_ms, wall_clock_ms
from tools.errors import CliError
from tools.render import Column, column, duration, parse_when, table

DEFAULT_LIMIT = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the `streams` subcommand."""
    p = subparsers.add_parser(
        "streams",
        help="list, total or follow the stream log",
        description="Query the relay's stream log (read-only; safe while the relay runs).",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--config", type=Path, metavar="FILE", help="relay config (its log path)")
    source.add_argument("--db", type=Path, metavar="PATH", help="stream log database file")
    p.add_argument("--agent", metavar="ID", help="only streams of this client agent")
    p.add_argument("--account", metavar="NAME", help="only streams of this account")
    p.add_argument("--tunnel", metavar="ID", help="only streams of this tunnel")
    p.add_argument(
        "--since",
        metavar="WHEN",
        help="a time ago (30m, 2h, 1d) or an ISO-8601 time: streams alive since then",
    )
    p.add_argument("--open", action="store_true", help="only streams not closed (open or paused)")
    p.add_argument("--paused", action="store_true", help="only paused streams")
    p.add_argument("--limit", type=int, metavar="N", help=f"at most N rows ({DEFAULT_LIMIT})")
    p.add_argument("--follow", action="store_true", help="print events as they are written")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--by", choices=("agent", "tunnel"), help="totals per agent or per tunnel")
    p.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    """Run `quotarelay streams` with parsed `args`; return the exit code."""
    _check_flags(args)
    since_ms = parse_since(args.since, wall_clock_ms()) if args.since is not None else None
    path = _db_path(args)
    filters: dict[str, Any] = {
        "agent": args.agent,
        "account": args.account,
        "tunnel": args.tunnel,
        "since_ms": since_ms,
    }
    try:
        if args.follow:
            await _follow(path, filters, as_json=args.json)
            return 0
        limit = DEFAULT_LIMIT if args.limit is None else args.limit
        filters.update(open_only=args.open, paused_only=args.paused, limit=limit)
        if args.by is not None:
            groups = await totals(path, by=args.by, **filters)
            _emit(groups, as_json=args.json, render=_totals_table)
        else:
            streams = await list_streams(path, **filters)
            _emit(streams, as_json=args.json, render=_streams_table)
    except StreamLogError as exc:
        raise CliError(str(exc)) from None
    except BrokenPipeError:
        _silence_stdout()
    return 0


def _check_flags(args: argparse.Namespace) -> None:
    if args.follow:
        for flag, given in (
            ("--by", args.by is not None),
            ("--open", args.open),
            ("--paused", args.paused),
            ("--limit", args.limit is not None),
        ):
            if given:
                raise CliError(f"{flag} cannot be combined with --follow")
    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit: expected a positive number, got {args.limit}")


def parse_since(text: str, now_ms: int) -> int:
    """Epoch ms of `--since`: a duration ago ("30m") or an ISO-8601 time (naive = UTC)."""
    return parse_when(text, now_ms, "--since")


def _db_path(args: argparse.Namespace) -> Path:
    if args.db is not None:
        path: Path = args.db
        return path
    try:
        return load_config(args.config).stream_log_path
    except ConfigError as exc:
        raise CliError(str(exc)) from None


async def _follow(path: Path, filters: dict[str, Any], *, as_json: bool) -> None:
    async with aclosing(follow(path, **filters)) as events:
        async for event in events:
            line = json.dumps(event) if as_json else format_event(event)
            print(line, flush=True)


def _emit(
    rows: list[dict[str, Any]],
    *,
    as_json: bool,
    render: Callable[[list[dict[str, Any]]], str],
) -> None:
    if as_json:
        for row in rows:
            print(json.dumps(row))
    elif not rows:
        print("(nothing matches)")
    else:
        print(render(rows))


def _silence_stdout() -> None:
    """Stop writing to a closed pipe (`... | head`) without a traceback at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def format_event(e: dict[str, Any]) -> str:
    """One followed event as a line: time, event, stream, then key=value pairs."""
    pairs = [
        f"agent={e['agent_id']}",
        f"account={e['account']}",
        f"tunnel={e['tunnel_id']}",
        f"peer={e['peer']}",
        f"target={e['target']}",
        f"state={e['state']}",
        f"up={e['bytes_up']}",
        f"down={e['bytes_down']}",
        f"dropped={e['bytes_dropped']}",
        f"pauses={e['pauses']}",
        f"paused={duration(e['paused_ms'])}",
    ]
    if e["pause_reason"] is not None:
        pairs.append(f"paused_for={e['pause_reason']}")
    if e["paused_ms"]:
        pairs.append(f"paused_by={paused_by(e)}")
    if e["close_reason"] is not None:
        pairs.append(f"reason={e['close_reason']}")
    return f"{iso_ms(e['at_ms'])}  {e['event']:<7}  {e['stream_id']}  " + " ".join(pairs)


def paused_by(row: dict[str, Any]) -> str:
    """Paused time per reason, the reasons that took any: "quota:15.8s,lease_wait:12ms"."""
    parts = [
        f"{key[len('paused_') : -len('_ms')]}:{duration(row[key])}"
        for key in PAUSED_BY
        if row.get(key)
    ]
    return ",".join(parts) or "-"


_PAUSED_BY: Column = ("PAUSED_BY", "", paused_by)  # key "": the whole row
_STREAM_COLUMNS: tuple[Column, ...] = (
    *(column(h, k) for h, k in (("STREAM", "stream_id"), ("AGENT", "agent_id"))),
    *(column(h, k) for h, k in (("TUNNEL", "tunnel_id"), ("TARGET", "target"))),
    *(column(h, k) for h, k in (("PEER", "peer"), ("STATE", "state"), ("UP", "bytes_up"))),
    *(column(h, k) for h, k in (("DOWN", "bytes_down"), ("DROPPED", "bytes_dropped"))),
    *(column(h, k) for h, k in (("PAUSES", "pauses"), ("PAUSED", "paused_ms"))),
    _PAUSED_BY,
    *(column(h, k) for h, k in (("OPENED", "opened_at_ms"), ("CLOSED", "closed_at_ms"))),
    column("REASON", "close_reason"),
)
_SUM_COLUMNS: tuple[Column, ...] = (
    *(
        column(header, key)
        for header, key in (
            ("STREAMS", "streams"),
            ("OPEN", "open_streams"),
            ("UP", "bytes_up"),
            ("DOWN", "bytes_down"),
            ("TOTAL", "bytes_total"),
            ("DROPPED", "bytes_dropped"),
            ("PAUSES", "pauses"),
            ("PAUSED", "paused_ms"),
        )
    ),
    _PAUSED_BY,
)
_AGENT_COLUMNS = (column("ACCOUNT", "account"), column("AGENT", "agent_id"))
_TUNNEL_COLUMNS = (
    column("TUNNEL", "tunnel_id"),
    *_AGENT_COLUMNS,
    column("KIND", "kind"),
    column("TARGET", "target"),
)


def _streams_table(rows: list[dict[str, Any]]) -> str:
    return table(_STREAM_COLUMNS, rows)


def _totals_table(rows: list[dict[str, Any]]) -> str:
    keys = _TUNNEL_COLUMNS if "tunnel_id" in rows[0] else _AGENT_COLUMNS
    return table((*keys, *_SUM_COLUMNS), rows)
