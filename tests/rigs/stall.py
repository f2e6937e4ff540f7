"""A support agent's channel that stops reading: the hostile peer of the slow-reader tests.

`StopReadingChannel` counts what arrives and, once `read_first` bytes came, pauses
reading on the socket under its whole SSH connection, so the relay's writes back up
while the channel's own window (as large as the caller opened it) stays open.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncssh

READ_FIRST = 1024 * 1024  # what the peer reads before it stops


class StopReadingChannel(asyncssh.SSHTCPSession[bytes]):
    """A support agent's channel: counts what arrives, then stops its connection reading."""

    def __init__(self, conn: asyncssh.SSHClientConnection, read_first: int = READ_FIRST) -> None:
        self.conn = conn
        self.read_first = read_first
        self.received = 0
        self.stopped = asyncio.Event()

    def data_received(self, data: bytes, datatype: Any) -> None:
        self.received += len(data)
        if self.received >= self.read_first and not self.stopped.is_set():
            transport: Any = self.conn._transport  # the socket under the SSH connection
            transport.pause_reading()
            self.stopped.set()
