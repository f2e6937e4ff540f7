"""`quotarelay streams`: tables, JSON, totals, follow and one-line errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from relay.streamlog.writer import StreamLog, iso_ms
from tests.relay.test_streamlog import ROOT, T0, rec, seed_mixed
from tools.cli import main
from tools.render import duration
from tools.streams_cmd import format_event, parse_since

Capture = pytest.CaptureFixture[str]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A stream log holding the mixed streams of `seed_mixed`."""
    path = tmp_path / "s.db"
    asyncio.run(seed_mixed(path))
    return path


def run_cli(capsys: Capture, *argv: str) -> tuple[int, list[str], str]:
    """Run `quotarelay streams ...`; return the exit code, stdout lines and stderr."""
    code = main(["streams", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_table_lists_streams_aligned(db: Path, capsys: Capture) -> None:
    """The default output is an aligned table, oldest first, one row per stream."""
    code, lines, err = run_cli(capsys, "--db", str(db))
    assert (code, err) == (0, "")
    header = lines[0].split()
    assert header[:6] == ["STREAM", "AGENT", "TUNNEL", "TARGET", "PEER", "STATE"]
    assert header[-5:] == ["PAUSED", "PAUSED_BY", "OPENED", "CLOSED", "REASON"]
    assert [line.split()[0] for line in lines[1:]] == ["a1", "a2", "a3", "b1", "a4"]
    column = lines[0].index("STATE")
    assert [line[column:].split()[0] for line in lines[1:]] == [
        "closed",
        "open",
        "paused",
        "open",
        "open",
    ]
    a1 = lines[1].split()
    assert a1[6:9] == ["100", "1", "0"]  # UP DOWN DROPPED, exact bytes
    assert a1[9:12] == ["2", "700ms", "quota:500ms,lease_wait:200ms"]  # PAUSES PAUSED PAUSED_BY
    assert lines[2].split()[11] == "-"  # a2 never paused
    assert a1[-3:] == ["2026-11-18T11:06:40Z", "2026-11-18T11:06:41Z", "x"]


def test_json_prints_every_field(db: Path, capsys: Capture) -> None:
    """--json prints one object per stream with every stored field."""
    code, lines, _ = run_cli(capsys, "--db", str(db), "--json", "--agent", "bob")
    assert code == 0
    [row] = [json.loads(line) for line in lines]
    assert (row["stream_id"], row["kind"], row["bytes_dropped"], row["state"]) == (
        "b1",
        "udp_public",
        64,
        "open",
    )
    assert row["closed_at_ms"] is None


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--account", "acme", "--open"], ["a2", "a3", "a4"]),
        (["--paused"], ["a3"]),
        (["--tunnel", "acme/alice/t2"], ["a4"]),
        (["--since", "1h"], ["a2", "a3", "b1", "a4"]),
        (["--since", iso_ms(T0 + 1001)], ["a2", "a3", "b1", "a4"]),
        (["--since", "2026-11-18T11:06:41"], ["a1", "a2", "a3", "b1", "a4"]),
        (["--limit", "2"], ["b1", "a4"]),
    ],
)
def test_filters(db: Path, capsys: Capture, flags: list[str], expected: list[str]) -> None:
    """Each filter flag narrows the listed streams."""
    code, lines, _ = run_cli(capsys, "--db", str(db), "--json", *flags)
    assert code == 0
    assert [json.loads(line)["stream_id"] for line in lines] == expected


def test_totals_by_agent_and_tunnel(db: Path, capsys: Capture) -> None:
    """--by agent and --by tunnel print per-group sums, largest first."""
    code, lines, _ = run_cli(capsys, "--db", str(db), "--by", "agent")
    assert code == 0
    assert lines[0].split() == [
        "ACCOUNT", "AGENT", "STREAMS", "OPEN", "UP", "DOWN", "TOTAL", "DROPPED", "PAUSES", "PAUSED",
        "PAUSED_BY",
    ]  # fmt: skip
    assert lines[1].split() == [
        "acme", "alice", "4", "3", "120", "1", "121", "0", "3", "700ms",
        "quota:500ms,lease_wait:200ms",
    ]  # fmt: skip
    assert lines[2].split()[:8] == ["beta", "bob", "1", "1", "0", "0", "0", "64"]
    code, lines, _ = run_cli(capsys, "--db", str(db), "--by", "tunnel", "--json")
    groups = {g["tunnel_id"]: g for g in map(json.loads, lines)}
    assert groups["acme/alice/tcp_endpoint/nas:22"]["streams"] == 3
    assert groups["acme/alice/t2"]["bytes_total"] == 0
    nas = groups["acme/alice/tcp_endpoint/nas:22"]
    assert (nas["paused_quota_ms"], nas["paused_lease_wait_ms"], nas["paused_flow_ms"]) == (
        500,
        200,
        0,
    )


def test_nothing_matches(db: Path, capsys: Capture) -> None:
    """An empty result says so instead of printing a bare header."""
    code, lines, _ = run_cli(capsys, "--db", str(db), "--agent", "nobody")
    assert (code, lines) == (0, ["(nothing matches)"])


def test_config_gives_the_log_path(db: Path, tmp_path: Path, capsys: Capture) -> None:
    """--config reads stream_log.path from the relay config, relative to the file."""
    config = tmp_path / "relay.toml"
    config.write_text('[stream_log]\npath = "s.db"\n')
    code, lines, _ = run_cli(capsys, "--config", str(config), "--json", "--paused")
    assert code == 0
    assert [json.loads(line)["stream_id"] for line in lines] == ["a3"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--db", "{tmp}/missing.db"], "stream log not found: {tmp}/missing.db"),
        (["--since", "yesterday"], "--since: expected a time ago (30m, 2h, 1d) or an ISO-8601"),
        (["--follow", "--by", "agent"], "--by cannot be combined with --follow"),
        (["--follow", "--open"], "--open cannot be combined with --follow"),
        (["--limit", "0"], "--limit: expected a positive number, got 0"),
        (["--config", "{tmp}/bad.toml"], "stream_log.nope: unknown key"),
        (["--config", "{tmp}/none.toml"], "config file not found: {tmp}/none.toml"),
    ],
)
def test_user_mistakes_are_one_line_errors(
    db: Path, tmp_path: Path, capsys: Capture, argv: list[str], message: str
) -> None:
    """Bad input ends with exit code 2 and one `quotarelay: ...` line naming the problem."""
    (tmp_path / "bad.toml").write_text("[stream_log]\nnope = 1\n")
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "--db" not in argv and "--config" not in argv:
        argv = ["--db", str(db), *argv]
    code, lines, err = run_cli(capsys, *argv)
    assert (code, lines) == (2, [])
    assert err.startswith("quotarelay: " + message.format(tmp=tmp_path))
    assert err.count("\n") == 1


def test_db_and_config_exclude_each_other(db: Path, capsys: Capture) -> None:
    """--db and --config together are refused by the argument parser."""
    with pytest.raises(SystemExit) as exc:
        main(["streams", "--db", str(db), "--config", "relay.toml"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_since_accepts_durations_and_iso_times() -> None:
    """--since takes a duration ago or an ISO time; a naive time is UTC."""
    assert parse_since("30m", T0) == T0 - 1_800_000
    assert parse_since("2026-11-18T11:06:40Z", 0) == T0
    assert parse_since("2026-11-18T11:06:40", 0) == T0
    assert parse_since("2026-11-18T12:06:40+01:00", 0) == T0


def test_event_line_and_durations() -> None:
    """A followed event prints as one line with time, event, stream and key=value pairs."""
    paused = {"paused_ms": 65_000, "paused_quota_ms": 60_000, "paused_flow_ms": 5000}
    record = rec("s9", "close", T0, bytes_up=5, close_reason="revoked", **paused)
    line = format_event({"id": 1, **asdict(record)})
    assert line.startswith("2026-11-18T11:06:40.000Z  close    s9  agent=alice ")
    assert "up=5 " in line and "paused=1m05s paused_by=quota:1m00s,flow:5.0s " in line
    assert line.endswith("reason=revoked") and "paused_for=" not in line
    record = rec("s9", "reason", T0, state="paused", pause_reason="quota", paused_ms=5)
    assert " paused=5ms paused_for=quota" in format_event({"id": 2, **asdict(record)})
    assert [duration(ms) for ms in (850, 12_345, 245_000, 7_380_000, 90_000_000)] == [
        "850ms",
        "12.3s",
        "4m05s",
        "2h03m",
        "1d01h",
    ]


# Ctrl-C as a terminal delivers it, even when this run was started in the background
# (a shell starts background jobs with SIGINT ignored, and Python keeps that).
_CLI = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from tools.cli import main; sys.exit(main(sys.argv[1:]))"
)


async def test_follow_prints_events_until_interrupted(tmp_path: Path) -> None:
    """--follow --json prints events as the relay writes them; Ctrl-C ends it (exit 130)."""
    db = tmp_path / "s.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = ["streams", "--db", str(db), "--follow", "--json", "--since", iso_ms(T0 - 1)]
    async with StreamLog(db, relay_id="r1") as log:
        log.record(rec("first"))
        await log.flush()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CLI, *argv, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        try:
            first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
            assert (first["stream_id"], first["event"]) == ("first", "open")
            log.record(rec("first", "close", T0 + 5, bytes_up=42, close_reason="peer_closed"))
            await log.flush()
            second = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
            assert (second["event"], second["bytes_up"], second["id"]) == ("close", 42, 2)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                code = await asyncio.wait_for(proc.wait(), 10)
            finally:
                if proc.returncode is None:  # never leave it running, whatever failed
                    proc.kill()
                    await proc.wait()
    assert code == 130
    assert await proc.stderr.read() == b""
