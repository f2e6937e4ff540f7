"""Socket options shared by the relay and the remote agent (neither imports the other).

Invariant: asking for buffers never fails a connection; the kernel caps what it grants.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

SOCKET_BUFFER = 2 * 1024 * 1024  # receive and send buffers asked for UDP sockets


def widen_buffers(transport: asyncio.BaseTransport, size: int = SOCKET_BUFFER) -> None:
    """Ask for big socket buffers (the kernel caps them): bursts are not lost in the kernel."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, size)
