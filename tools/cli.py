"""The `quotarelay` command line: one console script, one subcommand module each.

Each module in `_COMMANDS` exposes `register(subparsers)`, which adds its parser
and sets `func` (an `async` callable taking the parsed namespace and returning an
exit code) and, for commands that run a service, `serves=True` (logs configured).
Errors a user can fix are raised as `CliError` and printed as one line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Awaitable, Callable, Sequence

_COMMANDS = (
    "tools.relay_cmd",
    "tools.streams_cmd",
    "tools.billing_cmd",
    "tools.up_cmd",
    "tools.agent_cmd",
)


class CliError(Exception):
    """A mistake the user can fix: printed as `quotarelay: <message>`, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quotarelay", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(name).register(subparsers)
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

        configure()
    try:
        code = run_async(args.func, args)
    except CliError as exc:
        print(f"quotarelay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(code)


if __name__ == "__main__":
    # Run the importable module's main, so its CliError is the one subcommands raise.
    from tools.cli import main as _main

    sys.exit(_main())
