"""`quotarelay agent expose|connect`: run the project's own agent in the foreground.

Invariants: settings come from `--config` (TOML, [agent] table) and flags, a
flag winning; every spec is checked before connecting and a bad one ends as one
`CliError` line, as does a private key file open to group or others. SIGTERM or
SIGINT stops the agent with exit code 0; a refusal in the first session exits 1
(the relay's reason is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

from quota.private_files import exposed
from tools.agent.client import Plan, emit, run_agent
from tools.agent.config import AgentConfigError, load_agent_config, parse_connect, parse_expose
from tools.errors import WHAT_TO_DO, CliError


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    agent = subparsers.add_parser("agent", help="the project's own agent (UDP and TCP tunnels)")
    actions = agent.add_subparsers(
        dest="agent_command", required=True, metavar="ACTION", help=WHAT_TO_DO
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="agent config file (TOML, an [agent] table)")
    common.add_argument("--relay", help="the relay's SSH front, HOST:PORT")
    common.add_argument("--user", help="this agent's id")
    common.add_argument("--key", help="private key file")
    common.add_argument("--known-hosts", help='known_hosts file, or "ignore" (tests only)')
    common.add_argument("--backoff-max", help="longest wait between reconnects (30s)")
    common.add_argument("--idle-timeout", help="forget a local UDP flow idle this long (120s)")

    expose = actions.add_parser(
        "expose", parents=[common], help="register tunnels as a client agent (pays)"
    )
    expose.add_argument(
        "--udp", action="append", default=[], metavar="[NAME:]PORT:HOST:HPORT",
        help="a UDP endpoint NAME:PORT, or a public UDP PORT (0: the relay picks)",
    )  # fmt: skip
    expose.add_argument(
        "--tcp", action="append", default=[], metavar="[NAME:]PORT:HOST:HPORT",
        help="a TCP endpoint NAME:PORT, or a public TCP PORT (0: the relay picks)",
    )  # fmt: skip
    expose.set_defaults(func=_run, role="expose")

    connect = actions.add_parser(
        "connect", parents=[common], help="reach endpoints as a support agent"
    )
    connect.add_argument(
        "--udp", action="append", default=[], metavar="[BIND:]LPORT:NAME:PORT",
        help="a local UDP port carried to the UDP endpoint NAME:PORT",
    )  # fmt: skip
    connect.add_argument(
        "--tcp", action="append", default=[], metavar="[BIND:]LPORT:NAME:PORT",
        help="a local TCP port carried to the TCP endpoint NAME:PORT",
    )  # fmt: skip
    connect.set_defaults(func=_run, role="connect")


def _plan(args: argparse.Namespace) -> Plan:
    specs = [("udp", t) for t in args.udp] + [("tcp", t) for t in args.tcp]
    if not specs:
        raise CliError(f"agent {args.role}: give at least one --udp or --tcp")
    if args.role == "expose":
        return Plan(exposes=[parse_expose(p, t) for p, t in specs], connects=[])
    return Plan(exposes=[], connects=[parse_connect(p, t) for p, t in specs])


async def _run(args: argparse.Namespace) -> int:
    try:
        plan = _plan(args)
        flags = {
            "relay": args.relay,
            "user": args.user,
            "key": args.key,
            "known_hosts": args.known_hosts,
            "backoff_max": args.backoff_max,
            "idle_timeout": args.idle_timeout,
        }
        cfg = load_agent_config(Path(args.config) if args.config else None, flags)
    except AgentConfigError as exc:
        raise CliError(str(exc)) from None
    if problem := exposed(cfg.key, "agent.key"):
        raise CliError(problem)  # as ssh refuses a private key others can read
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    emit("config_from_env", keys=list(cfg.env_keys), ignored=list(cfg.env_ignored))
    runner = asyncio.create_task(run_agent(cfg, plan), name="agent-sessions")
    stopper = asyncio.create_task(stop.wait(), name="agent-stop")
    await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if runner.done():
        return runner.result()
    runner.cancel()
    await asyncio.gather(runner, stopper, return_exceptions=True)
    return 0
