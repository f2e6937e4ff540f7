"""Run the event loop: uvloop when it is installed, else asyncio's own."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_name() -> str:
    """Which loop `run` will use ("uvloop" or "asyncio"); QUOTARELAY_LOOP=asyncio forces asyncio."""
    if os.environ.get("QUOTARELAY_LOOP", "") == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    if loop_name() == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
