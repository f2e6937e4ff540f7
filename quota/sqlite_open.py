"""Opening an aiosqlite connection that may fail, shared by the journal and the billing store.

Invariant: a connection that failed to open has its worker thread joined before
the error propagates, so the thread never reports back to a loop that closed.
"""

from __future__ import annotations

import asyncio

import aiosqlite


async def join_worker(conn: aiosqlite.Connection) -> None:
    """Wait for a failed connection's worker thread to stop before the loop may close.

    aiosqlite posts its stop to the thread without awaiting it; if the loop closed
    first, the thread would fail to report back (an unhandled thread exception).
    """
    thread = getattr(conn, "_thread", None)
    if thread is not None and thread.is_alive():
        await asyncio.to_thread(thread.join, 5)
