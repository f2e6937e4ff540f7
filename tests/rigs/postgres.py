"""A PostgreSQL database of its own for one test run (or one bench run), dropped at the end.

Invariants:
- The server is reached through its maintenance database, by default
  `postgresql://postgres@127.0.0.1:5432/postgres` (`QUOTARELAY_TEST_POSTGRESQL`
  overrides); a run creates `quotarelay_test_<pid>_<random>` there and drops it
  when it ends. Databases left by runs whose process is gone are dropped too.
- Each user of the database (a test, a bench section) gets a fresh schema of
  its own: its URL carries `search_path`, so the billing store migrates an
  empty schema and never sees another test's rows.
- Whether PostgreSQL tests run is one decision (`decide`): reachable runs them;
  unreachable skips them, naming why, unless `CI` is set, where it fails.
- Blocking calls: asyncpg runs on a loop of its own in a worker thread, so
  these work from a fixture, a test's event loop or the threaded bench alike.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

import asyncpg

MAINTENANCE_ENV = "QUOTARELAY_TEST_POSTGRESQL"
DEFAULT_MAINTENANCE = "postgresql://postgres@127.0.0.1:5432/postgres"
BACKENDS = ["sqlite", "postgresql"]  # what the `database` fixture runs each test on
PREFIX = "quotarelay_test_"
SKIP_PREFIX = "PostgreSQL part skipped"
T = TypeVar("T")


def maintenance_url(env: Mapping[str, str] = os.environ) -> str:
    return env.get(MAINTENANCE_ENV) or DEFAULT_MAINTENANCE


def blocking(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to its end on a loop of its own in a worker thread."""

    async def main() -> T:
        return await make()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


def with_database(url: str, name: str, **query: str) -> str:
    """`url` pointing at database `name`, with these query parameters."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(
        parts._replace(path=f"/{name}", query=urllib.parse.urlencode(query))
    )


async def _probe(url: str, timeout_s: float) -> str | None:
    try:
        conn = await asyncpg.connect(url, timeout=timeout_s)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return f"no PostgreSQL at {url}: {type(exc).__name__}: {exc}"
    await conn.close()
    return None


def probe(url: str, timeout_s: float = 5.0) -> str | None:
    """None when PostgreSQL answers at `url`, else why not."""
    return blocking(lambda: _probe(url, timeout_s))


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    action: Literal["run", "skip", "fail"]
    message: str = ""


def decide(reason: str | None, *, ci: bool) -> Decision:
    """What PostgreSQL tests do, given why PostgreSQL is unreachable (None: it is reachable)."""
    if reason is None:
        return Decision(action="run")
    if ci:
        return Decision(action="fail", message=f"CI is set and PostgreSQL is required: {reason}")
    return Decision(action="skip", message=f"{SKIP_PREFIX}: {reason} (with CI set this fails)")


def _gone(name: str) -> bool:
    """A test database whose run's process no longer exists."""
    pid = name.removeprefix(PREFIX).split("_", 1)[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class TestDatabase:
    """A database for this run; `fresh_url()` hands out an empty schema in it."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, maintenance: str) -> None:
        self.maintenance = maintenance
        self.name = f"{PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
        self.url = with_database(maintenance, self.name)
        self._schemas = itertools.count(1)

    def create(self) -> TestDatabase:
        blocking(self._create)
        return self

    async def _create(self) -> None:
        conn = await asyncpg.connect(self.maintenance)
        try:
            rows = await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE $1", PREFIX + "%"
            )
            for name in (r[0] for r in rows if _gone(r[0])):
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await conn.close()

    def fresh_url(self) -> str:
        """The URL of a new, empty schema of this database."""
        schema = f"s{next(self._schemas)}"
        blocking(lambda: self._execute(self.url, f"CREATE SCHEMA {schema}"))
        return with_database(self.maintenance, self.name, search_path=schema)

    def drop(self) -> None:
        blocking(
            lambda: self._execute(
                self.maintenance, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'
            )
        )

    @staticmethod
    async def _execute(url: str, sql: str) -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
