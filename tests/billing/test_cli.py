"""`quotarelay billing ...` against a real server, and `billing serve` as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from quota.billing.server import BillingServer
from tests.billing.api import ADMIN
from tools.cli import CliError, build_parser

ROOT = Path(__file__).resolve().parents[2]


async def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    args = build_parser().parse_args(["billing", *argv])
    assert await args.func(args) == 0
    return capsys.readouterr().out


async def test_cli_walks_account_agent_deposit_subscribe_ledger(
    server: BillingServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Create, register, deposit, subscribe, buy, set, read the ledger: all via the CLI."""
    monkeypatch.setenv("QUOTARELAY_BILLING_URL", server.url)
    monkeypatch.setenv("QUOTARELAY_BILLING_TOKEN", ADMIN)
    created = json.loads(await _run(capsys, "account", "create", "acme", "--json"))
    acc, token = created["account"]["id"], created["token"]
    agent = json.loads(
        await _run(
            capsys,
            "agent",
            "register",
            acc,
            "nas",
            "--json",
            "--token",
            token,
            "--public-key",
            "ssh-ed25519 AAAAC3Nz a@b",
        )
    )
    out = await _run(capsys, "deposit", acc, "50", "--payment-id", "pay-1")
    assert "balance: 50.000" in out
    await _run(capsys, "subscribe", agent["id"], "pro", "--token", token)
    await _run(capsys, "package", "buy", agent["id"], "1G", "--token", token)
    await _run(
        capsys,
        "agent",
        "set",
        agent["id"],
        "--metered",
        "on",
        "--topup-package",
        "1G",
        "--topup-limit",
        "2.5",
        "--topup-below",
        "100M",
        "--token",
        token,
    )
    shown = json.loads(await _run(capsys, "agent", "show", agent["id"], "--json"))
    assert (shown["allow_metered"], shown["topup_limit"], shown["topup_below"]) == (
        True,
        2_500,
        100_000_000,
    )
    ledger = json.loads(await _run(capsys, "ledger", acc, "--json", "--kind", "package"))
    assert [e["amount"] for e in ledger["entries"]] == [-500]
    assert "balance: 30.500" in await _run(capsys, "account", "show", acc)
    assert "pro" in await _run(capsys, "plan", "list")


async def test_cli_errors_are_one_line_cli_errors(
    server: BillingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """API refusals, bad amounts and a missing URL become CliError messages."""
    monkeypatch.delenv("QUOTARELAY_BILLING_URL", raising=False)
    parser = build_parser()
    cases: list[tuple[list[str], str]] = [
        (["account", "show", "x", "--token", ADMIN], "--url"),
        (["account", "show", "nope", "--url", server.url, "--token", ADMIN], "404"),
        (
            ["deposit", "a", "0.0001", "--payment-id", "p", "--url", server.url, "--token", ADMIN],
            "not an amount",
        ),
        (["account", "show", "x", "--url", server.url, "--token", "wrong"], "401"),
    ]
    for argv, expected in cases:
        args = parser.parse_args(["billing", *argv])
        with pytest.raises(CliError, match=expected):
            await args.func(args)


async def test_billing_serve_runs_as_a_process(tmp_path: Path) -> None:
    """`quotarelay billing serve --config F` listens and serves /openapi.json."""
    config = tmp_path / "billing.toml"
    example = (ROOT / "examples" / "billing.toml").read_text()
    example = example.replace("port = 8480", "port = 0").replace(
        'database = "var/billing.sqlite3"', f'database = "{tmp_path / "b.sqlite3"}"'
    )
    example = example.replace("change-me-", "own-secret-")  # the example's are refused
    config.touch(mode=0o600)  # it holds tokens: billing serve refuses a wider mode
    config.write_text(example)
    env: dict[str, Any] = {**os.environ, "QUOTARELAY_LOOP": "asyncio", "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.cli",
        "billing",
        "serve",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        url = line.rsplit(" ", 1)[1].strip()
        async with aiohttp.ClientSession() as session, session.get(url + "/openapi.json") as r:
            assert r.status == 200 and (await r.json())["openapi"] == "3.1.0"
        proc.terminate()  # SIGTERM: a clean shutdown, exit code 0
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
