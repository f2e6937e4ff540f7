"""The suite's deadline: a test that hangs fails by itself, named, and the run goes on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HANGING = '''
import asyncio


async def test_hangs() -> None:
    """Waits for an event nobody sets."""
    await asyncio.Event().wait()


def test_after() -> None:
    """Runs after the hanging test."""
'''


def test_a_hanging_test_fails_with_its_name(tmp_path: Path) -> None:
    """With the project's pytest config, a hung test fails by timeout and the next one runs."""
    (tmp_path / "test_hang.py").write_text(HANGING)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(ROOT / "pyproject.toml"),
            "-o",
            "timeout=2",
            "--rootdir",
            str(tmp_path),
            "-p",
            "no:cacheprovider",
            "-q",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "FAILED" in out and "test_hang.py::test_hangs" in out, out
    assert "Timeout" in out, out
    assert "1 failed, 1 passed" in out, out
