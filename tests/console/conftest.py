"""Fixtures: a billing server (SQLite and PostgreSQL) with an account, and console visitors."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.console.client import Setup, Visitor, serving
from tests.rigs.browser import Browser, decide, missing


@pytest.fixture
async def setup(tmp_path: Path, database: str) -> AsyncIterator[Setup]:
    """The set-up on SQLite and on PostgreSQL."""
    async with serving(tmp_path, database) as s:
        yield s


@pytest.fixture
async def lone_setup(tmp_path: Path) -> AsyncIterator[Setup]:
    """The set-up on SQLite only (browser tests: the backend is not what they test)."""
    async with serving(tmp_path, str(tmp_path / "billing.sqlite3")) as s:
        yield s


@pytest.fixture
async def visitor(setup: Setup) -> AsyncIterator[Visitor]:
    v = setup.visitor()
    yield v
    await v.close()


@pytest.fixture
async def browser(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Browser]:
    """A headless Chromium; its last page is saved as a screenshot named after the test."""
    action, message = decide(missing(), ci=bool(os.environ.get("CI")))
    if action == "fail":
        pytest.fail(message, pytrace=False)
    if action == "skip":
        pytest.skip(message)
    b = await asyncio.to_thread(Browser, tmp_path / "browser")
    try:
        yield b
    finally:
        await asyncio.to_thread(b.screenshot, request.node.nodeid.split("::", 1)[-1])
        await asyncio.to_thread(b.quit)
