"""`quotarelay up`: a ready-to-try relay with a demo client and support agent.

It writes everything under one folder (default ./var/demo): agent keys, the
agent registry, the relay config with a fresh admin token, a known_hosts file
for the relay's host key. It then runs the relay in this process, grants the
demo client agent its first bytes and prints the ssh commands to paste.
Ctrl-C stops it cleanly. Running it again reuses what the folder holds.
"""

from __future__ import annotations

import argparse
import secrets
import shlex
from pathlib import Path
from typing import Any

import asyncssh

from quota.core.errors import InvalidValue
from quota.core.units import parse_size
from relay.config import load_config
from relay.errors import ConfigError
from relay.hub import Hub
from tools.cli import CliError

CLIENT, SUPPORT, ACCOUNT = "demo-client", "demo-support", "demo"


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser("up", help="start a demo relay and print the ssh commands")
    p.add_argument("--dir", default="var/demo", help="where keys, config and logs go")
    p.add_argument("--ssh-port", type=int, default=2222, help="the relay's SSH port")
    p.add_argument("--admin-port", type=int, default=8022, help="the admin API port")
    p.add_argument("--grant", default="1G", help="bytes granted to the demo client at start")
    p.add_argument("--service-port", type=int, default=8080, help="the demo service's local port")
    p.add_argument("--local-port", type=int, default=9090, help="the support agent's local port")
    p.set_defaults(func=_up, serves=True)


def _key(path: Path) -> str:
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519")
        path.write_bytes(key.export_private_key())
        path.chmod(0o600)
    return str(asyncssh.read_private_key(str(path)).export_public_key().decode().strip())


def prepare(folder: Path, ssh_port: int, admin_port: int) -> Path:
    """Write keys, agents.toml, relay.toml and known_hosts into `folder`; return the config."""
    folder.mkdir(parents=True, exist_ok=True)
    client, support = _key(folder / f"{CLIENT}.key"), _key(folder / f"{SUPPORT}.key")
    (folder / "agents.toml").write_text(
        f'[[agent]]\nid = "{CLIENT}"\naccount = "{ACCOUNT}"\nrole = "client"\n'
        f'keys = ["{client}"]\n\n'
        f'[[agent]]\nid = "{SUPPORT}"\naccount = "{ACCOUNT}"\nrole = "support"\n'
        f'keys = ["{support}"]\n'
    )
    token_file = folder / "admin.token"
    if not token_file.exists():
        token_file.write_text(secrets.token_urlsafe(24) + "\n")
        token_file.chmod(0o600)
    config = folder / "relay.toml"
    config.write_text(
        "[relay]\n"
        'id = "demo-relay"\n'
        f'ssh_listen = "127.0.0.1:{ssh_port}"\n'
        'host_key = "relay_host_key"\n'
        'agents_file = "agents.toml"\n'
        "[admin]\n"
        f'listen = "127.0.0.1:{admin_port}"\n'
        'token_file = "admin.token"\n'
        "[stream_log]\n"
        'path = "streams.db"\n'
        'json_lines = "streams.jsonl"\n'
        'interim = "10s"\n'
    )
    from relay.app import load_host_key

    host_key = load_host_key(folder / "relay_host_key")
    public = host_key.export_public_key().decode().strip()
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{ssh_port} {public}\n")
    return config


def instructions(folder: Path, args: argparse.Namespace, config: Path) -> str:
    ssh_port, svc, local = args.ssh_port, args.service_port, args.local_port

    def ssh(agent: str, forward: str) -> str:
        return shlex.join(
            [
                "ssh", "-i", str(folder / f"{agent}.key"), "-p", str(ssh_port),
                "-o", f"UserKnownHostsFile={folder / 'known_hosts'}", "-o", "IdentitiesOnly=yes",
                "-N", *forward.split(), f"{agent}@127.0.0.1",
            ]
        )  # fmt: skip

    cfg = shlex.quote(str(config))
    return "\n".join(
        [
            f"quotarelay is up: relay SSH on 127.0.0.1:{ssh_port}. Paste these in other terminals.",
            "",
            f"1. The client agent exposes localhost:{svc} as endpoint 'web' (account {ACCOUNT}):",
            f"   {ssh(CLIENT, f'-R web:80:localhost:{svc}')}",
            f"2. The support agent reaches it on its own localhost:{local}:",
            f"   {ssh(SUPPORT, f'-L {local}:web:80')}",
            "3. Or the client agent opens a public port (the relay prints which):",
            f"   {ssh(CLIENT, f'-R 0:localhost:{svc}')}",
            "",
            "Traffic is metered against the client agent's bucket. Grant more, watch streams:",
            f"   .venv/bin/quotarelay relay grant {CLIENT} 1G --config {cfg}",
            f"   .venv/bin/quotarelay relay agents --config {cfg}",
            f"   .venv/bin/quotarelay streams --config {cfg}",
            "",
            "Ctrl-C stops the relay.",
        ]
    )


async def _up(args: argparse.Namespace) -> int:
    folder = Path(args.dir).resolve()
    try:
        grant = parse_size(args.grant)
        config_path = prepare(folder, args.ssh_port, args.admin_port)
        config = load_config(config_path)
    except (ConfigError, InvalidValue) as exc:
        raise CliError(str(exc)) from None
    from relay.app import serve

    async def ready(hub: Hub) -> None:
        hub.grant(CLIENT, grant)
        print(instructions(folder, args, config_path), flush=True)

    try:
        return await serve(config, on_ready=ready)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
