"""`quotarelay billing ...` against a real server, and `billing serve` as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from datetime import UTC, datetime
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
    assert "balance:    50.000" in out and "None" not in out
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
    assert "balance:       30.500" in await _run(capsys, "account", "show", acc)
    plans = (await _run(capsys, "plan", "list")).splitlines()
    assert plans[0].split() == ["PLAN", "KIND", "PRICE", "PERIOD", "TRAFFIC"]
    assert plans[1].split() == ["pro", "periodic", "19.000", "30d00h", "10000000000", "(10G)"]
    assert plans[-1] == "metered traffic: 0.100 coin per GB (10^9 bytes)"


async def test_ledger_reads_as_a_table_filtered_by_time_and_agent(
    server: BillingServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ledger` prints coin, sizes and times; --since/--until/--agent filter; --json unchanged."""
    monkeypatch.setenv("QUOTARELAY_BILLING_URL", server.url)
    monkeypatch.setenv("QUOTARELAY_BILLING_TOKEN", ADMIN)
    created = json.loads(await _run(capsys, "account", "create", "acme", "--json"))
    acc = created["account"]["id"]
    await _run(capsys, "deposit", acc, "50", "--payment-id", "pay-1")
    agent = json.loads(await _run(capsys, "agent", "register", acc, "nas", "--json"))["id"]
    await _run(capsys, "subscribe", agent, "pro")
    lines = (await _run(capsys, "ledger", acc, "--limit", "1")).splitlines()
    assert lines[0].split() == [
        *("ID", "AT", "KIND", "AGENT", "AMOUNT", "BALANCE", "TRAFFIC", "USED", "REASON"),
    ]
    assert lines[1].split()[2:6] == ["deposit", "-", "50.000", "50.000"]
    assert re.fullmatch(r"20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ", lines[1].split()[1])
    assert lines[-1] == "more entries: add --after 1"
    raw = json.loads(await _run(capsys, "ledger", acc, "--json"))
    assert [e["kind"] for e in raw["entries"]] == ["deposit", "subscription"]
    reason = raw["entries"][1]["reason"]  # the period's start as a time, not epoch ms
    assert re.fullmatch(r".*, period from 20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ", reason)
    assert raw["next_cursor"] is None  # the API's answer as it came
    last_at = raw["entries"][-1]["at"]
    iso = datetime.fromtimestamp(last_at / 1000, UTC).isoformat()
    since = json.loads(await _run(capsys, "ledger", acc, "--json", "--since", iso))
    assert {e["kind"] for e in since["entries"]} <= {"deposit", "subscription"}
    assert since["entries"][-1]["at"] == last_at
    assert all(e["at"] >= last_at // 1000 * 1000 for e in since["entries"])
    future = json.loads(await _run(capsys, "ledger", acc, "--json", "--since", "2999-01-01"))
    assert future["entries"] == []
    past = json.loads(await _run(capsys, "ledger", acc, "--json", "--until", "2000-01-01"))
    assert past["entries"] == []
    mine = json.loads(await _run(capsys, "ledger", acc, "--json", "--agent", agent))
    assert [e["kind"] for e in mine["entries"]] == ["subscription"]
    with pytest.raises(CliError, match="--until: expected a time ago"):
        await _run(capsys, "ledger", acc, "--until", "yesterday")


def test_idempotency_keys_only_on_changes() -> None:
    """--key is offered by commands that change something, refused by those that read."""
    parser = build_parser()
    for argv in (["ledger", "acc"], ["account", "show", "acc"], ["plan", "list"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["billing", *argv, "--key", "k"])
    for argv in (["deposit", "acc", "1", "--payment-id", "p"], ["package", "buy", "agt", "1G"]):
        assert parser.parse_args(["billing", *argv, "--key", "k"]).key == "k"


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
    admin = "from-the-environment-0123456789"
    env.update(
        QUOTARELAY_BILLING_SERVER_ADMIN_TOKEN=admin,  # its own prefix: taken, named in the log
        QUOTARELAY_BILLING_URL="http://127.0.0.1:9",  # the CLI's: not the service's
        QUOTARELAY_BILLING_TOKEN="the-cli-token-0123456789",
    )
    log = (tmp_path / "billing.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.cli",
        "billing",
        "serve",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        url = line.rsplit(" ", 1)[1].strip()
        async with aiohttp.ClientSession() as session, session.get(url + "/openapi.json") as r:
            assert r.status == 200 and (await r.json())["openapi"] == "3.1.0"
        headers = {"Authorization": f"Bearer {admin}"}
        async with (
            aiohttp.ClientSession() as session,
            session.get(url + "/v1/catalogue", headers=headers) as r,
        ):
            assert r.status == 200  # the environment's admin token is the service's
        proc.terminate()  # SIGTERM: a clean shutdown, exit code 0
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
    lines = [json.loads(x) for x in (tmp_path / "billing.log").read_text().splitlines()]
    (started,) = [e for e in lines if e["event"] == "config_from_env"]
    assert started["keys"] == ["QUOTARELAY_BILLING_SERVER_ADMIN_TOKEN"]
    assert started["ignored"] == ["QUOTARELAY_BILLING_TOKEN", "QUOTARELAY_BILLING_URL"]
    assert admin not in (tmp_path / "billing.log").read_text()
