"""A pytest plugin: the run's summary says in one line that the PostgreSQL part was skipped.

Loaded by tests/conftest.py (`pytest_plugins`); it reads the skip reasons that
`tests.rigs.postgres.decide` wrote, so the line names why PostgreSQL was away.
"""

from __future__ import annotations

import pytest

from tests.rigs.postgres import SKIP_PREFIX


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say in one line how many PostgreSQL tests were skipped, and why."""
    skipped = [
        rep
        for rep in terminalreporter.stats.get("skipped", [])
        if isinstance(rep.longrepr, tuple) and SKIP_PREFIX in str(rep.longrepr[2])
    ]
    if skipped:
        reason = str(skipped[0].longrepr[2]).removeprefix("Skipped: ")
        terminalreporter.write_line(f"{len(skipped)} tests skipped. {reason}", yellow=True)
