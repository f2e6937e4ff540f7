"""The SSH port of a relay of workers: the supervisor accepts, admits and passes each connection.

Pre-login limits are the relay's, not a worker's: the supervisor's gate
(relay.hub.gate, quota.core.admission) sees every connection to the SSH port,
so `max_startups`, `per_source_startups`, the connection limit, login grace and
auth tries count the relay as a whole, and a flood is logged once.

Invariants:
- A connection the gate drops is closed by the supervisor before a byte of it
  is read or written. An admitted one is passed (SCM_RIGHTS, on the worker's
  descriptor channel) to one ready worker, round robin, with a ticket; the
  supervisor then closes its own copy. A connection no worker can take is closed
  and reported closed to the gate at once.
- The worker reports each ticket's rejected keys, its login and its close
  (`Login` on its link, in order); a disconnection the gate decides (too many
  tries, grace over, the reserve) goes back as `Dismiss` on the descriptor
  channel, after the `Passed` it follows. A worker with no room left for it (its
  own descriptors: public-port peers and passed connections) closes it at once
  and reports it closed. Every ticket is reported closed to the
  gate exactly once: by its worker, or when that worker is lost.
- In a worker, `PassedGate` stands for the gate: a passed connection counts in
  its own descriptors only (`Admission.held`); public-port peers pass its own
  admission as in a one-process relay.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import socket
import time
from collections.abc import Callable, Hashable
from typing import Any

import structlog

from quota.core.admission import AdmissionConfig, Disconnect, Drop, Kind, Reason, source_key
from quota.core.throttle import LogNow, LogThrottle
from relay.descriptors import LISTEN_BACKLOG, descriptor_limit
from relay.hub.gate import Gate
from relay.workers.link import Link
from relay.workers.messages import Dismiss, Login, Passed
from relay.workers.reach import FdChannel

log = structlog.get_logger("relay.workers")

_OUT_OF = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
PAUSE_ON_EMFILE_S = 1.0  # as asyncio's own accept loop does
ACCEPT_BATCH = 128  # accepts per wake-up, so the loop serves the workers' links too


class Door:
    """The supervisor's side: accept, admit, pass; the gate's events from the workers."""

    def __init__(
        self,
        sock: socket.socket,
        gate: Gate,
        workers: Callable[[], list[tuple[int, FdChannel]]],
        holds_tunnels: Callable[[str], bool],
    ) -> None:
        self.sock = sock
        self.gate = gate
        self.workers = workers
        self.holds_tunnels = holds_tunnels
        self.where: dict[int, int] = {}  # ticket -> worker key
        self._tickets = itertools.count(1)
        self._turn = 0
        self._reading = False
        self._throttle = LogThrottle(interval_ms=60_000, max_keys=4)

    def start(self) -> None:
        self.sock.listen(LISTEN_BACKLOG)
        self.sock.setblocking(False)
        self._resume()

    def close(self) -> None:
        self._pause()

    def _resume(self) -> None:
        if not self._reading and self.sock.fileno() >= 0:
            asyncio.get_running_loop().add_reader(self.sock.fileno(), self._accept)
            self._reading = True

    def _pause(self) -> None:
        if self._reading:
            self._reading = False
            asyncio.get_running_loop().remove_reader(self.sock.fileno())

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in _OUT_OF:
                    raise
                self._out_of_descriptors(exc)
                return
            self._admit(conn, str(addr[0]) if isinstance(addr, tuple) else "")

    def _out_of_descriptors(self, exc: OSError) -> None:
        self._pause()
        asyncio.get_running_loop().call_later(PAUSE_ON_EMFILE_S, self._resume)
        decision = self._throttle.note("accept", time.monotonic_ns() // 1_000_000)
        if isinstance(decision, LogNow):
            log.error(
                "accept_out_of_descriptors",
                error=errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                limit=descriptor_limit(),
                suppressed=decision.suppressed,
            )

    def _admit(self, conn: socket.socket, host: str) -> None:
        ticket = next(self._tickets)
        with conn:
            if not self.gate.connect(ticket, host, Kind.SSH, self._dismisser(ticket)):
                return
            passed = Passed(ticket=ticket, trusted=self.gate.trusts(host))
            workers = self.workers()
            for i in range(len(workers)):
                key, channel = workers[(self._turn + i) % len(workers)]
                if channel.try_send(passed, conn.fileno()):
                    self._turn += i + 1
                    self.where[ticket] = key
                    return
            self.gate.closed(ticket)  # no worker took it: closed here, now

    def _dismisser(self, ticket: int) -> Callable[[Disconnect], None]:
        def dismiss(decision: Disconnect) -> None:
            key = self.where.get(ticket)
            for k, channel in self.workers():
                if k == key:
                    channel.send(Dismiss(ticket=ticket, reason=decision.reason.value))

        return dismiss

    def on_login(self, key: int, event: Login) -> None:
        """A worker's report about one of the connections passed to it."""
        ticket = event.ticket
        if self.where.get(ticket) != key:
            return  # not this worker's (a late report from a lost incarnation)
        if event.event == "auth_failed":
            self.gate.auth_failed(ticket, event.username)
        elif event.event == "authenticated":
            agent_id = event.agent_id
            self.gate.authenticated(ticket, holds_tunnels=lambda: self.holds_tunnels(agent_id))
        elif event.event == "closed":
            del self.where[ticket]
            self.gate.closed(ticket)

    def lost(self, key: int) -> None:
        """A worker is gone: every connection passed to it is closed with it."""
        for ticket, k in list(self.where.items()):
            if k == key:
                del self.where[ticket]
                self.gate.closed(ticket)


class PassedGate(Gate):
    """A worker's gate: SSH connections come admitted by the supervisor's, with their ticket."""

    def __init__(self, config: AdmissionConfig, link: Link) -> None:
        super().__init__(config)
        self.link = link
        self._tickets: dict[Hashable, int] = {}  # connection -> its ticket
        self._dismiss: dict[int, Callable[[Disconnect], None]] = {}  # ticket -> disconnect
        self.trusted: set[int] = set()  # tickets passed as trusted (their agent holds tunnels)
        self._tries: dict[int, int] = {}  # ticket -> its failed authentication attempts

    def connect(
        self,
        conn: Hashable,
        host: str,
        kind: Kind,
        disconnect: Callable[[Disconnect], None] | None = None,
        ticket: int | None = None,
    ) -> bool:
        if ticket is None or kind is not Kind.SSH:
            return super().connect(conn, host, kind, disconnect)
        trusted = ticket in self.trusted
        self.trusted.discard(ticket)
        if isinstance(self.admission.held(conn, trusted=trusted), Drop):
            self._note("connection_dropped", source_key(host), reason="connection_limit")
            self.link.send(Login(ticket=ticket, event="closed"))
            return False  # this process has no room: closed at once, nothing read
        self._sources[conn] = source_key(host)
        self._tickets[conn] = ticket
        if disconnect is not None:
            self._dismiss[ticket] = disconnect
        return True

    def auth_failed(self, conn: Hashable, username: str) -> Disconnect | None:
        ticket = self._tickets.get(conn)
        if ticket is None:
            return super().auth_failed(conn, username)
        self.link.send(Login(ticket=ticket, event="auth_failed", username=username[:64]))
        # the supervisor's gate counts, logs and decides; the last try is also cut here,
        # at once: its word arrives a message later, time for the peer to try one more key
        tries = self._tries[ticket] = self._tries.get(ticket, 0) + 1
        if tries < self.admission.config.max_auth_tries:
            return None
        decision = Disconnect(reason=Reason.MAX_AUTH_TRIES)
        disconnect = self._dismiss.pop(ticket, None)
        if disconnect is not None:
            disconnect(decision)
        return decision

    def authenticated(
        self, conn: Hashable, *, holds_tunnels: Callable[[], bool], agent_id: str = ""
    ) -> Disconnect | None:
        ticket = self._tickets.get(conn)
        if ticket is None:
            return super().authenticated(conn, holds_tunnels=holds_tunnels, agent_id=agent_id)
        self.link.send(Login(ticket=ticket, event="authenticated", agent_id=agent_id))
        return None

    def closed(self, conn: Hashable) -> None:
        ticket = self._tickets.pop(conn, None)
        if ticket is None:
            super().closed(conn)
            return
        self._dismiss.pop(ticket, None)
        self._tries.pop(ticket, None)
        self._sources.pop(conn, None)
        self.admission.closed(conn)
        self.link.send(Login(ticket=ticket, event="closed"))

    def dismiss(self, ticket: int, reason: str) -> None:
        """The supervisor's gate tells a connection to go (tries, grace, the reserve)."""
        disconnect = self._dismiss.pop(ticket, None)
        if disconnect is not None:
            disconnect(Disconnect(reason=Reason(reason)))


def passed_socket(fd: int) -> socket.socket:
    """The socket of a passed descriptor (it is owned from here on)."""
    try:
        return socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        raise


def ticket_of(conn: Any) -> int | None:
    """The ticket a worker set on a passed connection (None: not passed)."""
    ticket = conn.get_extra_info("ticket")
    return ticket if isinstance(ticket, int) else None
