"""Relay logs: `--log-level` and `--log-format` on `relay run`; a refused key leaves a line."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from tests.rigs.keys import AgentSpec
from tests.rigs.metrics import scrape, value
from tests.rigs.relay import ROOT, Relay, relay_command
from tests.rigs.ssh import Ssh
from tests.rigs.waits import poll
from tools.cli import build_parser


async def _run_relay(relay: Relay, *flags: str) -> list[str]:
    """Start the relay with `flags`, wait for its ready line, stop it; its stderr lines."""
    relay.write_config()
    proc = await asyncio.create_subprocess_exec(
        *relay_command(relay.config_path), *flags, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert b"relay_ready" in ready
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    return err.decode().splitlines()


async def test_text_format_and_level_flags(tmp_path: Path, agents: dict[str, AgentSpec]) -> None:
    """`--log-format text` writes readable lines; `--log-level warning` drops the info ones."""
    relay = Relay(tmp_path, list(agents.values()))
    text = await _run_relay(relay, "--log-format", "text")
    ready = [line for line in text if "relay_ready" in line]
    assert ready and not ready[0].startswith("{") and "[info" in ready[0]
    default = await _run_relay(relay)
    assert json.loads(next(line for line in default if "relay_ready" in line))["level"] == "info"
    quiet = await _run_relay(relay, "--log-level", "warning")
    assert not any("relay_ready" in line for line in quiet)


async def test_a_refused_key_is_logged_and_counted(
    tmp_path: Path, agents: dict[str, AgentSpec]
) -> None:
    """An unregistered key leaves an `auth_refused` line and counts as an `auth` refusal."""
    relay = Relay(tmp_path, list(agents.values()), extra={"metrics": {"listen": "127.0.0.1:0"}})
    await relay.start()
    try:
        spec = agents["tech"]
        impostor = AgentSpec("nas-agent", "acme", "client", spec.key_path, spec.public)
        code, _ = await (await Ssh(relay, impostor, "-W", "nas:22", "relay").start()).finish()
        assert code == 255

        def logged() -> list[dict[str, object]]:
            text = (relay.tmp / "relay.log").read_text()
            lines = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
            return [x for x in lines if x.get("event") == "auth_refused"]

        await poll(lambda: bool(logged()), "an auth_refused line")
        assert logged()[0]["username"] == "nas-agent" and logged()[0]["level"] == "warning"
        samples = await scrape(relay.ready["metrics"])
        refused = value(samples, "quotarelay_relay_refusals_total", kind="ssh", cause="auth")
        assert refused is not None and refused >= 1
    finally:
        await relay.stop()


def test_billing_serve_takes_the_same_log_flags() -> None:
    """`billing serve` accepts --log-level and --log-format; an unknown level is refused."""
    argv = ["billing", "serve", "--config", "b.toml", "--log-level", "debug", "--log-format"]
    args = build_parser().parse_args([*argv, "text"])
    assert (args.log_level, args.log_format, args.serves) == ("debug", "text", True)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["relay", "run", "--log-level", "loud"])
