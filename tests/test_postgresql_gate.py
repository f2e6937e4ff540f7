"""The PostgreSQL gate: reachable runs the PostgreSQL tests, unreachable skips them, CI fails."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.rigs.postgres import MAINTENANCE_ENV, SKIP_PREFIX, decide, probe

ROOT = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: nothing listens there


def test_decide_runs_skips_or_fails() -> None:
    """Reachable runs; unreachable skips, saying why; unreachable with CI set fails."""
    assert decide(None, ci=False).action == decide(None, ci=True).action == "run"
    skip = decide("no PostgreSQL at x", ci=False)
    assert skip.action == "skip" and skip.message.startswith(SKIP_PREFIX)
    assert "no PostgreSQL at x" in skip.message
    fail = decide("no PostgreSQL at x", ci=True)
    assert fail.action == "fail" and "CI" in fail.message and "no PostgreSQL at x" in fail.message


def test_probe_names_an_unreachable_server() -> None:
    """Probing a port nothing listens on answers why, naming the address."""
    port = _closed_port()
    reason = probe(f"postgresql://postgres@127.0.0.1:{port}/postgres", timeout_s=2)
    assert reason is not None and f"127.0.0.1:{port}" in reason


def _pytest_without_postgresql(ci: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env[MAINTENANCE_ENV] = f"postgresql://postgres@127.0.0.1:{_closed_port()}/postgres"
    if ci:
        env["CI"] = "true"
    test = "tests/billing/test_config_store.py::test_stale_version_conflicts_and_the_operation_is_retried"  # noqa: E501
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", test],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )


def test_without_postgresql_the_run_says_it_skipped_the_postgresql_part() -> None:
    """No PostgreSQL, CI unset: SQLite runs, PostgreSQL is skipped and the summary says so."""
    done = _pytest_without_postgresql(ci=False)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "1 passed, 1 skipped" in done.stdout
    assert f"1 tests skipped. {SKIP_PREFIX}: no PostgreSQL at" in done.stdout


def test_without_postgresql_ci_fails_the_run() -> None:
    """No PostgreSQL with CI set: the PostgreSQL run errors and the whole run fails."""
    done = _pytest_without_postgresql(ci=True)
    assert done.returncode == 1, done.stdout[-2000:]
    assert "CI is set and PostgreSQL is required" in done.stdout
    assert "1 passed" in done.stdout and "1 error" in done.stdout
