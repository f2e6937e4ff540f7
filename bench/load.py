"""Load for the benchmarks: a counting TCP sink, bulk senders, idle connection holders.

Invariants:
- The sink reads every connection to EOF and records, per connection, the bytes
  it got, when the first and last bytes came, and optionally every arrival.
- A bulk run starts its clock once every stream is connected, and stops it when
  the sink has seen EOF on every stream; a stream that delivers a byte count
  other than the one sent fails the run (a figure is never made of a broken run).
- Blocking sockets in threads: the kernel does the copying with the GIL released,
  so the load generator costs the same for every contender.
- `python -m bench.load hold PORTFILE` runs a sink that only accepts and holds
  connections (for thousands of idle streams in a process of its own).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CHUNK = 1024 * 1024
_PAYLOAD = memoryview(os.urandom(CHUNK))


@dataclass(slots=True)
class SinkConn:
    received: int = 0
    first: float = 0.0
    last: float = 0.0
    eof: bool = False
    arrivals: list[tuple[float, int]] = field(default_factory=list)


class Sink:
    """A TCP server on 127.0.0.1 that counts what each connection sends, until EOF."""

    def __init__(self, trace: bool = False) -> None:
        self.trace = trace
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.port = int(self.listener.getsockname()[1])
        self.conns: list[SinkConn] = []
        self.cond = threading.Condition()
        self.socks: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, name="sink-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            conn = SinkConn()
            with self.cond:
                self.conns.append(conn)
                self.socks.append(sock)
            threading.Thread(target=self._read, args=(sock, conn), daemon=True).start()

    def _read(self, sock: socket.socket, conn: SinkConn) -> None:
        buf = bytearray(256 * 1024)
        try:
            while n := sock.recv_into(buf):
                now = time.perf_counter()
                if not conn.received:
                    conn.first = now
                conn.received += n
                conn.last = now
                if self.trace:
                    with self.cond:
                        conn.arrivals.append((now, conn.received))
                        self.cond.notify_all()
        except OSError:
            pass
        with self.cond:
            conn.eof = True
            self.cond.notify_all()
        sock.close()

    def reset(self) -> None:
        with self.cond:
            self.conns = []

    def wait_done(self, streams: int, timeout: float) -> list[SinkConn]:
        """Wait until `streams` connections reached EOF; return them."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while sum(c.eof for c in self.conns) < streams:
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [c.received for c in self.conns]
                    raise TimeoutError(f"sink: {streams} streams not done in {timeout}s: {got}")
                self.cond.wait(min(left, 0.5))
            return list(self.conns)

    def close(self) -> None:
        self.listener.close()
        with self.cond:
            socks, self.socks = self.socks, []
        for s in socks:
            s.close()


def _send(sock: socket.socket, nbytes: int, start: threading.Barrier) -> None:
    start.wait()
    left = nbytes
    while left > 0:
        k = min(left, CHUNK)
        sock.sendall(_PAYLOAD[:k])
        left -= k
    sock.shutdown(socket.SHUT_WR)


def connect(port: int, timeout: float = 30.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def bulk(port: int, streams: int, total: int, sink: Sink, timeout: float = 120.0) -> float:
    """Send `total` bytes over `streams` connections to `port`; MB/s (10^6 bytes) at the sink."""
    per = total // streams
    sink.reset()
    socks = [connect(port) for _ in range(streams)]
    start = threading.Barrier(streams + 1)
    threads = [
        threading.Thread(target=_send, args=(s, per, start), daemon=True, name=f"bulk-{i}")
        for i, s in enumerate(socks)
    ]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    try:
        conns = sink.wait_done(streams, timeout)
    finally:
        for t in threads:
            t.join(timeout)
        for s in socks:
            s.close()
    wrong = [c.received for c in conns if c.received != per]
    if wrong or len(conns) != streams:
        raise RuntimeError(f"bulk: expected {streams} x {per} bytes, sink got {wrong}")
    elapsed = max(c.last for c in conns) - t0
    return per * streams / elapsed / 1e6


async def _hold(port_file: Path) -> None:
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    port_file.write_text(str(server.sockets[0].getsockname()[1]))
    await asyncio.Event().wait()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "hold":
        sys.exit("usage: python -m bench.load hold PORTFILE")
    from tests.rigs.procs import raise_nofile

    raise_nofile()
    try:
        from relay.loop import run

        run(_hold(Path(sys.argv[2])))
    except KeyboardInterrupt:
        pass
