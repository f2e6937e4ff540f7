"""Fixtures every test package may use: the billing database, on SQLite and on PostgreSQL.

`database` is parametrized over both backends, so a test (or a fixture) that
asks for it runs once against each; the PostgreSQL run gets an empty schema of
the run's own database (`tests.rigs.postgres`). Without a reachable
PostgreSQL those runs are skipped and the summary says so in one line
(`tests.rigs.postgres_summary`); with `CI` set they fail instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rigs.postgres import BACKENDS, TestDatabase, decide, maintenance_url, probe

# the summary line of skipped PostgreSQL tests (a hook: conftest files hold fixtures only)
pytest_plugins = ["tests.rigs.postgres_summary"]


@pytest.fixture(scope="session")
def postgresql_db() -> Iterator[TestDatabase]:
    """This run's PostgreSQL database, created at first use and dropped at the end."""
    url = maintenance_url()
    decision = decide(probe(url), ci=bool(os.environ.get("CI")))
    if decision.action == "fail":
        pytest.fail(decision.message, pytrace=False)
    if decision.action == "skip":
        pytest.skip(decision.message)
    db = TestDatabase(url).create()
    yield db
    db.drop()


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A billing database for one test: a SQLite file, or an empty PostgreSQL schema."""
    if request.param == "sqlite":
        return str(tmp_path / "billing.sqlite3")
    db: TestDatabase = request.getfixturevalue("postgresql_db")
    return db.fresh_url()
