"""Secrets: what holds a token, a key or a database is private from creation; exposed ones refused.

The services run as real processes with umask 022 and with chmod disabled
(`os.chmod`, `os.fchmod` and `Path.chmod` raise), so a file can only end up 0600
(a folder 0700) if the call that created it made it so: there was never a
moment when another user could open it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncssh
import pytest

from quota.core.tokens import DEMO_PREFIX
from quota.private_files import create_private, private_database, private_folder, replace_private
from relay.config import load_config
from tests.rigs.billing import ADMIN, BILLING_TOML, RELAY_TOKEN
from tests.rigs.procs import free_port
from tests.rigs.relay import ROOT
from tools.up_cmd import prepare

NO_CHMOD = """
import os, pathlib, sys
def _refuse(*args, **kwargs):
    raise PermissionError("a file's mode may only be set when it is created")
for name in ("chmod", "fchmod", "lchmod"):
    if hasattr(os, name):
        setattr(os, name, _refuse)
pathlib.Path.chmod = _refuse
os.umask(0o022)
from tools.cli import main
sys.exit(main(sys.argv[1:]))
"""

DEMO_TOKEN = DEMO_PREFIX + "0123456789abcdef0123456789abcdef"
UP_FILES = {
    "billing.toml", "relay.toml", "billing-admin.token", "relay.token", "admin.token",
    "client.key", "support.key", "relay_host_key", "known_hosts", "state.json",
    "billing.sqlite3", "billing.sqlite3-wal", "billing.sqlite3-shm",
    "journal.db", "journal.db-wal", "streams.db", "streams.db-wal", "streams.jsonl",
}  # fmt: skip


def quotarelay(*args: str) -> list[str]:
    """The console script, with umask 022 and every chmod refused."""
    return [sys.executable, "-c", NO_CHMOD, *args]


def modes(top: Path) -> dict[str, str]:
    """Every file and folder under `top` (itself as "."), with its permission bits."""
    found = {".": oct(stat.S_IMODE(top.stat().st_mode))}
    for path in top.rglob("*"):
        found[str(path.relative_to(top))] = oct(stat.S_IMODE(path.lstat().st_mode))
    return found


def not_private(top: Path) -> dict[str, str]:
    """The files under `top` that are not 0600 and the folders that are not 0700."""
    wanted = {True: oct(0o700), False: oct(0o600)}
    return {
        name: mode for name, mode in modes(top).items() if mode != wanted[(top / name).is_dir()]
    }


async def read_until(stream: asyncio.StreamReader, needle: str, log: Path) -> str:
    """The first line holding `needle`; fails with the process's log when it ends first."""
    while line := (await stream.readline()).decode():
        if needle in line:
            return line
    raise AssertionError(f"ended before {needle!r}: {log.read_text()[-3000:]}")


@asynccontextmanager
async def started(args: list[str], log: Path, ready: str) -> AsyncIterator[str]:
    """A `quotarelay` process until it printed `ready`; then stopped by SIGTERM, killed if stuck.

    How it stops is not what these tests are about (the service tests check that),
    so a slow stop does not fail them.
    """
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            *quotarelay(*args), cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=err
        )
    try:
        assert proc.stdout is not None
        yield await asyncio.wait_for(read_until(proc.stdout, ready, log), 60)
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_up_creates_every_file_0600_and_its_folders_0700(tmp_path: Path) -> None:
    """`quotarelay up` makes its folders 0700 and every token, key, config and database 0600."""
    top = tmp_path / "var"
    ports = [str(free_port()) for _ in range(3)]
    args = ["up", "--dir", str(top / "demo"), "--ssh-port", ports[0]]
    args += ["--admin-port", ports[1], "--billing-port", ports[2]]
    async with started(args, tmp_path / "up.log", "Ctrl-C stops"):
        assert set(modes(top / "demo")) >= UP_FILES  # -wal and -shm exist while it runs
        assert not_private(top) == {}
    assert not_private(top) == {}


async def test_relay_run_and_billing_serve_create_private_files(tmp_path: Path) -> None:
    """`billing serve` and `relay run` create their folders 0700 and databases, keys, logs 0600."""
    billing, relay = tmp_path / "billing", tmp_path / "relay"
    billing.mkdir(mode=0o700)
    relay.mkdir(mode=0o700)
    text = BILLING_TOML.format(
        port=0, db=billing / "data" / "billing.sqlite3", admin=ADMIN, relay=RELAY_TOKEN,
        plan_traffic=10**9, package_traffic=10**9,
    )  # fmt: skip
    create_private(billing / "billing.toml", text.encode())
    create_private(relay / "relay.token", RELAY_TOKEN.encode() + b"\n")
    serve = ["billing", "serve", "--config", str(billing / "billing.toml")]
    async with started(serve, tmp_path / "billing.log", "listening on") as line:
        url = line.rsplit(" ", 1)[1].strip()
        sections = {
            "relay": {"id": "relay-1", "ssh_listen": "127.0.0.1:0"},
            "admin": {"listen": "127.0.0.1:0", "token": "x" * 32},
            "billing": {"url": url, "token_file": "relay.token"},
        }
        lines = [f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
                 for name, keys in sections.items()]  # fmt: skip
        create_private(relay / "relay.toml", "".join(lines).encode())
        run = ["relay", "run", "--config", str(relay / "relay.toml")]
        async with started(run, tmp_path / "relay.log", "relay_ready"):
            made = set(modes(relay / "var"))
            assert {"relay_host_key", "journal.db", "streams.db", "streams.jsonl"} <= made
            assert not_private(relay) == {}
        assert {"billing.sqlite3", "billing.sqlite3-wal"} <= set(modes(billing / "data"))
        assert not_private(billing) == {}


def test_private_files_are_made_private_whatever_was_there(tmp_path: Path) -> None:
    """New folders are 0700 down the path; new content replaces a 0644 file with a 0600 one."""
    old = tmp_path / "billing.toml"
    old.write_text("old")
    old.chmod(0o644)
    replace_private(old, b"new")
    private_folder(tmp_path / "a" / "b")
    private_database(tmp_path / "c" / "x.db")
    assert old.read_text() == "new"
    assert not_private(tmp_path) == {}  # pytest makes tmp_path 0700


def refused(*args: str, env: dict[str, str] | None = None) -> str:
    """Run `quotarelay ARGS`, which must refuse to start (exit 2) within 30 s; its error line."""
    proc = subprocess.run(
        [sys.executable, "-m", "tools.cli", *args],
        cwd=ROOT, capture_output=True, timeout=30, env={**os.environ, **(env or {})},
    )  # fmt: skip
    err = proc.stderr.decode()
    assert proc.returncode == 2, err[-3000:]
    assert err.startswith("quotarelay: ") and err.count("\n") == 1, err
    return err


def billing_config(
    folder: Path, *, mode: int = 0o600, host: str = "127.0.0.1", **tokens: str
) -> Path:
    """A billing config in `folder` with the rig's tokens (or `admin`, `relay`), of mode `mode`."""
    text = BILLING_TOML.format(
        port=0, db=folder / "billing.sqlite3", admin=tokens.get("admin", ADMIN),
        relay=tokens.get("relay", RELAY_TOKEN), plan_traffic=10**9, package_traffic=10**9,
    ).replace('host = "127.0.0.1"', f'host = "{host}"')  # fmt: skip
    path = folder / "billing.toml"
    create_private(path, text.encode())
    os.chmod(path, mode)  # the test makes the operator's mistake on purpose
    return path


def test_billing_refuses_a_config_file_others_can_read(tmp_path: Path) -> None:
    """`billing serve` with a 0644 config (it holds tokens) exits 2 naming the file and the fix."""
    config = billing_config(tmp_path, mode=0o644)
    err = refused("billing", "serve", "--config", str(config))
    assert f"{config} holds a secret" in err and f"chmod 600 {config}" in err
    assert not (tmp_path / "billing.sqlite3").exists()


def test_billing_refuses_a_database_others_can_read(tmp_path: Path) -> None:
    """The database keeps account tokens: a 0640 one is refused, naming server.database."""
    config = billing_config(tmp_path)
    (tmp_path / "billing.sqlite3").touch(mode=0o640)
    err = refused("billing", "serve", "--config", str(config))
    assert f"server.database: {tmp_path / 'billing.sqlite3'} holds a secret" in err


def test_billing_refuses_example_and_demo_tokens(tmp_path: Path) -> None:
    """The example config's token and a demo token of `quotarelay up` are refused by the key."""
    config = billing_config(tmp_path, admin="change-me-admin-token-0123456789", relay=DEMO_TOKEN)
    err = refused("billing", "serve", "--config", str(config))
    assert "server.admin_token: the example config's token is published" in err
    assert "relays[0].token: a demo token" in err


def test_billing_refuses_a_short_admin_token_on_every_address(tmp_path: Path) -> None:
    """On 0.0.0.0 the billing admin token needs 32+ characters; nothing listens when refused."""
    config = billing_config(tmp_path, host="0.0.0.0", admin="a" * 31)
    err = refused("billing", "serve", "--config", str(config))
    assert "server.admin_token: an admin API on 0.0.0.0 (not loopback) needs" in err


def test_agent_refuses_a_key_others_can_read(tmp_path: Path) -> None:
    """Like ssh, `quotarelay agent` refuses a 0644 private key, naming it and the fix."""
    key = tmp_path / "agent.key"
    key.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    key.chmod(0o644)
    args = ["--relay", "127.0.0.1:1", "--user", "a", "--key", str(key), "--known-hosts", "ignore"]
    err = refused("agent", "expose", *args, "--tcp", "web:80:127.0.0.1:9")
    assert f"agent.key: {key} holds a secret" in err and f"chmod 600 {key}" in err


def relay_config(folder: Path, *, mode: int = 0o600, **sections: dict[str, str]) -> Path:
    """A relay config in `folder` on loopback port 0, `sections` over it, of mode `mode`."""
    tables = {"relay": {"ssh_listen": "127.0.0.1:0"}, "admin": {"listen": "127.0.0.1:0"}}
    for name, keys in sections.items():
        tables.setdefault(name, {}).update(keys)
    text = "".join(
        f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
        for name, keys in tables.items()
    )
    path = folder / "relay.toml"
    create_private(path, text.encode())
    os.chmod(path, mode)  # the test makes the operator's mistake on purpose
    return path


def test_relay_refuses_a_token_file_others_can_read(tmp_path: Path) -> None:
    """`relay run` with a 0644 admin.token_file exits 2 naming it and the fix; nothing is made."""
    token = tmp_path / "admin.token"
    token.write_text("t" * 32 + "\n")
    token.chmod(0o644)
    config = relay_config(tmp_path, admin={"token_file": "admin.token"})
    err = refused("relay", "run", "--config", str(config))
    assert f"admin.token_file: {token} holds a secret" in err and f"chmod 600 {token}" in err
    assert not (tmp_path / "var").exists()  # no host key, no stream log


def test_relay_refuses_a_config_holding_a_token_others_can_read(tmp_path: Path) -> None:
    """A 0640 relay.toml with admin.token written in it is refused, naming the config file."""
    config = relay_config(tmp_path, mode=0o640, admin={"token": "t" * 32})
    err = refused("relay", "run", "--config", str(config))
    assert f"admin.token: {config} holds a secret" in err and f"chmod 600 {config}" in err


def test_relay_refuses_a_host_key_others_can_read(tmp_path: Path) -> None:
    """The relay's private host key open to others is refused like ssh's, naming relay.host_key."""
    key = tmp_path / "host_key"
    key.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    key.chmod(0o604)
    config = relay_config(tmp_path, relay={"host_key": "host_key"}, admin={"token": "t" * 32})
    err = refused("relay", "run", "--config", str(config))
    assert f"relay.host_key: {key} holds a secret" in err


def test_relay_refuses_a_short_admin_token_on_every_address(tmp_path: Path) -> None:
    """The admin API on 0.0.0.0 with a 1-character token is refused, naming admin.token."""
    config = relay_config(tmp_path, admin={"listen": "0.0.0.0:0", "token": "x"})
    err = refused("relay", "run", "--config", str(config))
    assert "admin.token: an admin API on 0.0.0.0 (not loopback) needs a token of 32+" in err


def test_relay_refuses_demo_and_example_tokens_outside_up(tmp_path: Path) -> None:
    """A demo token of `quotarelay up` and the example's token are refused by `relay run`."""
    sections = {"url": "http://127.0.0.1:9", "token": "change-me-relay-token-0123456789"}
    config = relay_config(tmp_path, admin={"token": DEMO_TOKEN}, billing=sections)
    err = refused("relay", "run", "--config", str(config))
    assert "admin.token: a demo token (quotarelay-demo-...) is accepted by `quotarelay up`" in err
    assert "billing.token: the example config's token is published" in err


def test_up_configs_are_refused_outside_up(tmp_path: Path) -> None:
    """The configs `quotarelay up` wrote are refused by `relay run` and `billing serve`."""
    args = argparse.Namespace(ssh_port=free_port(), admin_port=free_port(), billing_port=0)
    billing, relay = prepare(tmp_path / "demo", args)
    err = refused("relay", "run", "--config", str(relay))
    assert "admin.token: a demo token" in err and "billing.token: a demo token" in err
    err = refused("billing", "serve", "--config", str(billing))
    assert "server.admin_token: a demo token" in err and "relays[0].token: a demo token" in err


def test_relay_config_names_the_files_that_hold_its_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token file, or relay.toml when a token is written in it, is a secret file; env is not."""
    config = relay_config(
        tmp_path,
        admin={"token_file": "admin.token"},
        billing={"url": "http://127.0.0.1:9", "token": RELAY_TOKEN},
    )
    (tmp_path / "admin.token").write_text("t" * 32)
    loaded = load_config(config)
    assert loaded.secret_files == (
        ("admin.token_file", tmp_path / "admin.token"),
        ("billing.token", config),
    )
    monkeypatch.setenv("QUOTARELAY_RELAY_ADMIN_TOKEN", "e" * 32)  # the file is not read then
    assert load_config(config).secret_files == (("billing.token", config),)
