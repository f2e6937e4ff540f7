"""One end of the unix socket between a worker and its supervisor.

Invariants:
- Messages are written in the order `send` was called and read whole, in order
  (relay.workers.messages frames them); nothing is awaited between a decision
  and the `send` that carries it out.
- A peer that goes away ends `messages()` quietly; a malformed frame raises
  `IpcError` from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

from relay.workers.messages import Message, decode, frame, frame_length


class Link:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def over(cls, sock: socket.socket) -> Link:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=2**20)
        return cls(reader, writer)

    @property
    def closed(self) -> bool:
        return self.writer.is_closing()

    def send(self, message: Message) -> None:
        if not self.writer.is_closing():
            self.writer.write(frame(message))

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.writer.drain()

    async def messages(self) -> AsyncIterator[Message]:
        while True:
            try:
                header = await self.reader.readexactly(4)
                body = await self.reader.readexactly(frame_length(header))
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            yield decode(body)

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.writer.wait_closed()
