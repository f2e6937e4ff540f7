"""The `quotarelay` command line: one console script, one subcommand module each.

Each module in `COMMANDS` exposes `register(subparsers)`, which adds its parser
and sets `func` (an `async` callable taking the parsed namespace and returning an
exit code) and, for commands that run a service, `serves=True` (logs configured
from the `--log-level` and `--log-format` that `add_log_options` gives them).
Errors a user can fix are raised as `CliError` (from `tools.errors`) and printed
as one line. Imports point one way: this module imports the subcommand modules,
and none of them imports this one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from types import ModuleType

from tools import agent_cmd, billing_cmd, completion_cmd, relay_cmd, streams_cmd, up_cmd
from tools.errors import WHAT_TO_DO, CliError

__all__ = ["COMMANDS", "CliError", "build_parser", "main", "version"]

COMMANDS: tuple[ModuleType, ...] = (
    relay_cmd,
    streams_cmd,
    billing_cmd,
    up_cmd,
    agent_cmd,
    completion_cmd,
)
DESCRIPTION = (
    "quotarelay: a TCP/UDP relay for SSH tunnel agents that meters their traffic"
    " against paid quotas, with the billing API that sells them."
)


def version() -> str:
    """The installed package's version ("0.1.0"), or "unknown" when run from a bare tree."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("quotarelay")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quotarelay",
        description=DESCRIPTION,
        epilog="Each command has its own --help: quotarelay relay --help.",
    )
    parser.add_argument(
        "--version", action="version", version=f"quotarelay {version()}", help="print the version"
    )
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help=WHAT_TO_DO
    )
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def run_async(
    func: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace
) -> int:
    """Run a subcommand coroutine on uvloop when it is installed."""
    from relay.loop import run

    async def _main() -> int:
        return await func(args)

    return run(_main())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "serves", False):  # services log JSON lines; client commands print
        from relay.logs import configure

        configure(getattr(args, "log_level", "info"), getattr(args, "log_format", "json"))
    try:
        if prepare := getattr(args, "prefork", None):  # `relay run`: before any loop or thread
            prepare(args)
        code = run_async(args.func, args)
    except CliError as exc:
        print(f"quotarelay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
