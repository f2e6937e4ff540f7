"""The gate before login: every connection to the SSH port or a public port passes it.

quota.core.admission decides; the gate carries each decision out at once and
logs it. quota.core.throttle keeps the log bounded under a flood.

Invariants:
- A dropped connection is closed before the relay reads or writes a byte of
  it; a disconnected one is told why (the SSH front sends the reason).
- Every admitted connection is reported `closed` exactly once, when its socket
  is gone, so the counts follow the descriptors the relay holds.
- Drops, auth failures and disconnections are counted by reason (`refusals`)
  and logged at most once per source per event per minute, each line saying how
  many were suppressed before it; `flush` writes the lines still owed.
- A source is trusted while an agent that holds live tunnels is logged in from
  it (`logged_in` / `logged_out`); the core spares a trusted source the random
  drop and lets it use the tunnel reserve.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import structlog

from quota.core.admission import (
    Accept,
    Admission,
    AdmissionConfig,
    Disconnect,
    Drop,
    Kind,
    MaxStartups,
    source_key,
)
from quota.core.errors import InvalidValue
from quota.core.throttle import LogNow, LogThrottle
from relay.errors import ConfigError

__all__ = ["Gate", "GateConfig", "Kind"]

log = structlog.get_logger("relay.gate")

LOG_INTERVAL_MS = 60_000
EXPIRE_EVERY_MS = 1_000  # login grace is enforced to within this


@dataclass(frozen=True, slots=True, kw_only=True)
class GateConfig:
    """The `[limits]` keys of admission before login; the descriptor limit comes at start."""

    max_startups: MaxStartups = field(default_factory=MaxStartups)
    per_source_startups: int = 10
    login_grace_ms: int = 30_000
    max_auth_tries: int = 6
    descriptor_reserve: int = 128
    tunnel_reserve: int = 64

    def admission(self, descriptor_limit: int) -> AdmissionConfig:
        """The core's config for a process that may hold `descriptor_limit` descriptors."""
        try:
            return AdmissionConfig(
                max_startups=self.max_startups,
                per_source=self.per_source_startups,
                login_grace_ms=self.login_grace_ms,
                max_auth_tries=self.max_auth_tries,
                descriptor_limit=descriptor_limit,
                reserve=self.descriptor_reserve,
                tunnel_reserve=self.tunnel_reserve,
            )
        except InvalidValue as exc:
            raise ConfigError(f"limits.descriptor_reserve: {exc}") from None


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class Gate:
    """Admission of every connection, carried out and logged."""

    def __init__(
        self,
        config: AdmissionConfig,
        *,
        clock: Callable[[], int] = monotonic_ms,
        roll: Callable[[], int] = lambda: random.randrange(100),
    ) -> None:
        self.admission = Admission(config)
        self.throttle = LogThrottle(interval_ms=LOG_INTERVAL_MS)
        self.clock, self.roll = clock, roll
        self._sources: dict[Hashable, str] = {}  # admitted connection -> source key
        self._logins: dict[str, dict[Hashable, Callable[[], bool]]] = {}
        self._disconnects: dict[Hashable, Callable[[Disconnect], None]] = {}
        self.auth_failures = 0

    @property
    def refusals(self) -> dict[str, int]:
        """Connections refused before login, by reason (stable snake_case keys)."""
        return {reason.value: n for reason, n in self.admission.refusals.items()}

    def source_of(self, conn: Hashable) -> str:
        return self._sources.get(conn, "")

    # -- events -------------------------------------------------------------------------

    def connect(
        self,
        conn: Hashable,
        host: str,
        kind: Kind,
        disconnect: Callable[[Disconnect], None] | None = None,
        ticket: int | None = None,
    ) -> bool:
        """A new connection from `host`: True if admitted; else close it at once.

        `ticket`: the connection was admitted by a relay's supervisor and passed
        here (relay.workers.door); a relay's own gate has none.
        """
        source = source_key(host)
        decision = self.admission.connect(
            conn,
            source=source,
            kind=kind,
            now=self.clock(),
            roll=self.roll(),
            trusted=kind is Kind.SSH and self._trusted(source),
        )
        if isinstance(decision, Drop):
            self._note("connection_dropped", source, reason=decision.reason.value, kind=kind.value)
            return False
        self._sources[conn] = source
        if disconnect is not None:
            self._disconnects[conn] = disconnect
        return True

    def auth_failed(self, conn: Hashable, username: str) -> Disconnect | None:
        """A rejected key on `conn`: a Disconnect once it had too many."""
        self.auth_failures += 1
        source = self.source_of(conn)
        self._note("auth_refused", source, username=username[:64])
        decision = self.admission.auth_failed(conn)
        return self._told(conn, decision)

    def authenticated(
        self, conn: Hashable, *, holds_tunnels: Callable[[], bool], agent_id: str = ""
    ) -> Disconnect | None:
        """`conn` logged in; `holds_tunnels` says (now or later) if its agent holds tunnels.

        `agent_id` is for a supervisor's gate, which asks its workers.
        """
        decision = self.admission.authenticated(conn, holds_tunnels=holds_tunnels())
        told = self._told(conn, decision)
        if told is None:
            self._disconnects.pop(conn, None)
            self._logins.setdefault(self.source_of(conn), {})[conn] = holds_tunnels
        return told

    def closed(self, conn: Hashable) -> None:
        """`conn` (admitted) is closed and its descriptor released."""
        source = self._sources.pop(conn)
        self._disconnects.pop(conn, None)
        logins = self._logins.get(source)
        if logins is not None:
            logins.pop(conn, None)
            if not logins:
                del self._logins[source]
        self.admission.closed(conn)

    def expire(self) -> None:
        """Disconnect every connection whose login grace has ended."""
        for conn, decision in self.admission.expire(self.clock()):
            self._told(conn, decision)

    def flush(self, *, final: bool = False) -> None:
        """Write the lines owed for sources that went quiet (`final`: all lines owed)."""
        now = self.clock()
        lines = self.throttle.drain(now) if final else self.throttle.flush(now)
        for line in lines:
            event, _, source = line.key.partition("|")
            log.warning(event or "refusals", source=source or line.key, suppressed=line.suppressed)

    async def run(self) -> None:
        """Enforce login grace and flush the log throttle, until cancelled."""
        last_flush = self.clock()
        while True:
            await asyncio.sleep(EXPIRE_EVERY_MS / 1000)
            self.expire()
            if self.clock() - last_flush >= LOG_INTERVAL_MS:
                last_flush = self.clock()
                self.flush()

    def trusts(self, host: str) -> bool:
        """Is an agent holding live tunnels logged in from `host`'s network?"""
        return self._trusted(source_key(host))

    # -- helpers ------------------------------------------------------------------------

    def _trusted(self, source: str) -> bool:
        return any(holds() for holds in self._logins.get(source, {}).values())

    def _told(self, conn: Hashable, decision: Accept | Disconnect) -> Disconnect | None:
        if isinstance(decision, Accept):
            return None
        self._note("login_disconnected", self.source_of(conn), reason=decision.reason.value)
        disconnect = self._disconnects.pop(conn, None)
        if disconnect is not None:
            disconnect(decision)
        return decision

    def _note(self, event: str, source: str, **fields: Any) -> None:
        decision = self.throttle.note(f"{event}|{source}", self.clock())
        if isinstance(decision, LogNow):
            shown = decision.key.partition("|")[2] or decision.key  # "*": the overflow key
            log.warning(event, source=shown, suppressed=decision.suppressed, **fields)
