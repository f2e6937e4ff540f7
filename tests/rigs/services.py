"""TCP services and clients for tests: a service that hashes what it gets, an exchange.

Everything binds 127.0.0.1; a service is an async context manager that closes
its listener and every connection it accepted.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from dataclasses import dataclass, field
from typing import Any


def pattern(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@dataclass
class Conn:
    received: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    eof: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    writer: asyncio.StreamWriter | None = None


class DigestService:
    """A TCP service on 127.0.0.1: sends `send` bytes to each client, hashes what it gets."""

    def __init__(self, send: bytes = b"", chunk: int = 65536, half_close: bool = True) -> None:
        self.send = send
        self.half_close = half_close
        self.chunk = chunk
        self.conns: list[Conn] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> DigestService:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for conn in self.conns:
            if conn.writer is not None:
                conn.writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(writer=writer)
        self.conns.append(conn)
        sender = asyncio.create_task(self._send(writer))
        try:
            while data := await reader.read(65536):
                conn.received += len(data)
                conn.digest.update(data)
            conn.eof.set()
            await sender
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            sender.cancel()
            writer.close()
            conn.closed.set()

    async def _send(self, writer: asyncio.StreamWriter) -> None:
        for i in range(0, len(self.send), self.chunk):
            writer.write(self.send[i : i + self.chunk])
            await writer.drain()
        if self.half_close and writer.can_write_eof():
            writer.write_eof()


async def exchange(port: int, payload: bytes, expect: int, chunk: int = 65536) -> tuple[str, int]:
    """Connect to 127.0.0.1:port, send payload then EOF, read `expect` bytes; digest of them."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    digest = hashlib.sha256()
    got = 0

    async def send() -> None:
        for i in range(0, len(payload), chunk):
            writer.write(payload[i : i + chunk])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    while got < expect:
        data = await reader.read(65536)
        if not data:
            break
        got += len(data)
        digest.update(data)
    await sender
    writer.close()
    return digest.hexdigest(), got


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def env_without_agent() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SSH_AUTH_SOCK", None)
    return env
