"""Waiting for a condition with a deadline: `poll` on an event loop, `wait_for` in a thread.

Both fail naming what they waited for; neither sleeps longer than one short step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def poll(check: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 20) -> None:
    """Wait until `check()` is true; fail naming `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def wait_for(check: object, what: str, timeout: float = 30.0, every: float = 0.02) -> None:
    """Poll `check()` until true; raise naming `what` after `timeout` seconds."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)
