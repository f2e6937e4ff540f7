"""A public-port leg holds at most one chunk while paused, on uvloop too (found by the bench)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from quota.core.stream import PauseReason
from relay.tcp.pump import TcpLeg

uvloop = pytest.importorskip("uvloop")


class _Stream:
    """A stream whose other leg never connects: the leg stays paused (CONNECTING)."""

    write_buffer = 256 * 1024

    def __init__(self) -> None:
        self.legs: list[TcpLeg] = []

    def leg_connected(self, leg: TcpLeg) -> None:
        self.legs.append(leg)

    def leg_lost(self, leg: TcpLeg, exc: Exception | None) -> None:
        pass


async def _flood_paused_leg() -> int:
    stream = _Stream()

    def factory() -> TcpLeg:
        leg = TcpLeg(cast(Any, stream), "up")
        leg.pause(PauseReason.CONNECTING)
        return leg

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"x" * (16 * 2**20))
    await asyncio.sleep(0.5)
    pending = sum(len(d) for leg in stream.legs for d in leg.pending or ())
    writer.close()
    for leg in stream.legs:
        leg.close()
    server.close()
    await server.wait_closed()
    await asyncio.sleep(0.05)
    return pending


def test_leg_paused_in_connection_made_reads_at_most_one_chunk_on_uvloop() -> None:
    """uvloop reads after connection_made despite pause_reading(); the leg pauses again."""
    pending = uvloop.run(_flood_paused_leg())
    assert pending <= 256 * 1024
