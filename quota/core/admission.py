"""Admission before login, decided as sshd decides it: start-ups, per source, total, tries, grace.

Invariants:
- `unauthenticated` is exactly the number of SSH connections admitted and
  neither authenticated nor closed; the per-source counts always sum to it.
- `total` is exactly the number of admitted connections not yet closed. A
  public-port peer or an SSH connection is admitted only below `ordinary_cap`
  (descriptor limit minus the reserve). An SSH connection from a `trusted`
  source (one where an agent holding live tunnels is logged in) may also take
  the tunnel reserve, and keeps a place there only if its own agent holds live
  tunnels. So the `reserve - tunnel_reserve` descriptors (admin API, stream
  log, journals) are never given to a connection, and a flood from elsewhere
  cannot take the tunnel reserve.
- A trusted SSH connection is spared MaxStartups' random drop (it is still
  counted, and the per-source limit still applies to it).
- MaxStartups is sshd's: with n unauthenticated connections standing, a new one
  is accepted when n < start, always dropped when n >= full, and otherwise
  dropped when roll < p, p = rate + (100 - rate) * (n - start) // (full - start)
  in whole percent (sshd truncates), `roll` uniform in 0..99.
- A connection is told to disconnect once it has `max_auth_tries` failures or
  is still unauthenticated at its login-grace deadline; it stays counted until
  the shell reports it `closed`, because its descriptor is held until then.
- A connection `held` (admitted by a supervisor's gate, then passed here) is
  checked against this process's descriptors only and counts in `total` only.
- Pure: `now` (milliseconds, never decreasing) and `roll` are parameters.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
from collections import Counter, OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from quota.core.errors import InvalidValue

_STARTUPS_RE = re.compile(r"^\s*([0-9]{1,9})(?::([0-9]{1,9}):([0-9]{1,9}))?\s*$", re.ASCII)


@dataclass(frozen=True, slots=True, kw_only=True)
class MaxStartups:
    """sshd's `MaxStartups start:rate:full` (random early drop of unauthenticated connections)."""

    start: int = 10
    rate: int = 30  # percent dropped once `start` connections stand
    full: int = 100

    def __post_init__(self) -> None:
        if self.start < 1 or self.full < 1:
            raise InvalidValue(f"max_startups: start and full must be at least 1 ({self})")
        if self.start > self.full:
            raise InvalidValue(f"max_startups: start {self.start} is above full {self.full}")
        if not 1 <= self.rate <= 100:
            raise InvalidValue(f"max_startups: rate {self.rate} is outside 1..100 (percent)")

    def drop_percent(self, standing: int) -> int:
        """The chance, in whole percent, that a new connection is dropped."""
        if standing < self.start:
            return 0
        if standing >= self.full or self.rate == 100:
            return 100
        rise = (100 - self.rate) * (standing - self.start) // (self.full - self.start)
        return self.rate + rise

    def drops(self, standing: int, roll: int) -> bool:
        """Drop a new connection with `standing` unauthenticated ones, `roll` in 0..99?"""
        if not 0 <= roll <= 99:
            raise InvalidValue(f"roll {roll} is outside 0..99")
        return roll < self.drop_percent(standing)


def parse_max_startups(text: str | int) -> MaxStartups:
    """Parse `"10:30:100"` (start:rate:full) or a single `"10"` (start = full, as sshd)."""
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise InvalidValue(f'max_startups: {text!r} is not start:rate:full (e.g. "10:30:100")')
    match = _STARTUPS_RE.match(str(text))
    if match is None:
        shown = repr(text) if len(str(text)) <= 32 else f"{str(text)[:16]!r}..."
        raise InvalidValue(f'max_startups: {shown} is not start:rate:full (e.g. "10:30:100")')
    start = int(match.group(1))
    if match.group(2) is None:
        return MaxStartups(start=start, full=start)
    return MaxStartups(start=start, rate=int(match.group(2)), full=int(match.group(3)))


@functools.lru_cache(maxsize=4096)
def source_key(host: str, *, v4_prefix: int = 32, v6_prefix: int = 128) -> str:
    """The network a peer address counts under (sshd's PerSourceNetBlockSize, 32:128).

    Cached: each connection from a source holds the same string, not a copy of its own.
    """
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host  # not an IP address (a unix socket path): counted on its own
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    prefix = v4_prefix if addr.version == 4 else v6_prefix
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


class Kind(enum.Enum):
    SSH = "ssh"  # a connection to the SSH port: logs in first
    PUBLIC = "public"  # a peer of a public port: no login, ordinary room only


class Reason(enum.Enum):
    """Why a connection was dropped or disconnected; stable values for logs and records."""

    MAX_STARTUPS = "max_startups"
    PER_SOURCE = "per_source_startups"
    CONNECTION_LIMIT = "connection_limit"
    LOGIN_GRACE = "login_grace"
    MAX_AUTH_TRIES = "max_auth_tries"


_MESSAGES = {
    Reason.MAX_STARTUPS: "Not allowed at this time",
    Reason.PER_SOURCE: "Not allowed at this time (too many logins from your address)",
    Reason.CONNECTION_LIMIT: "Not allowed at this time (relay connection limit reached)",
    Reason.LOGIN_GRACE: "Timeout before authentication",
    Reason.MAX_AUTH_TRIES: "Too many authentication failures",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Accept:
    """Go on: the connection is admitted (or stays)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Drop:
    """Close a new connection at once, before any protocol byte is read."""

    reason: Reason

    @property
    def message(self) -> str:
        return _MESSAGES[self.reason]


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnect:
    """Close an admitted connection, telling the peer why; it stays counted until closed."""

    reason: Reason

    @property
    def message(self) -> str:
        return _MESSAGES[self.reason]


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionConfig:
    max_startups: MaxStartups = MaxStartups()
    per_source: int = 10  # unauthenticated SSH connections per source network
    login_grace_ms: int = 30_000  # 0: no limit (as sshd's LoginGraceTime 0)
    max_auth_tries: int = 6
    descriptor_limit: int = 1024  # the hard RLIMIT_NOFILE
    reserve: int = 128  # descriptors ordinary connections never take
    tunnel_reserve: int = 64  # of the reserve: connections of agents holding live tunnels

    def __post_init__(self) -> None:
        for key in ("per_source", "max_auth_tries", "descriptor_limit"):
            if getattr(self, key) < 1:
                raise InvalidValue(f"{key}: must be at least 1, not {getattr(self, key)}")
        if self.login_grace_ms < 0:
            raise InvalidValue(f"login_grace: must not be negative, not {self.login_grace_ms}")
        if not 0 <= self.tunnel_reserve <= self.reserve < self.descriptor_limit:
            raise InvalidValue(
                f"reserve: need 0 <= tunnel_reserve ({self.tunnel_reserve}) <= reserve "
                f"({self.reserve}) < descriptor limit ({self.descriptor_limit})"
            )

    @property
    def ordinary_cap(self) -> int:
        return self.descriptor_limit - self.reserve


@dataclass(slots=True)
class _Pending:
    source: str
    deadline: int | None
    failures: int = 0


class Admission:
    """Connections before and after login; every method is one event, answered by a decision."""

    def __init__(self, config: AdmissionConfig) -> None:
        self.config = config
        self._kinds: dict[Hashable, Kind] = {}  # every admitted connection not closed
        self._pending: OrderedDict[Hashable, _Pending] = OrderedDict()  # in admission order
        self._doomed: dict[Hashable, tuple[Disconnect, _Pending]] = {}  # told, not yet closed
        self._per_source: Counter[str] = Counter()
        self._now = 0
        self.refusals: Counter[Reason] = Counter()

    @property
    def total(self) -> int:
        return len(self._kinds)

    @property
    def unauthenticated(self) -> int:
        return len(self._pending) + len(self._doomed)

    def standing(self, source: str) -> int:
        """Unauthenticated connections of one source network."""
        return self._per_source[source]

    def connect(
        self,
        conn: Hashable,
        *,
        source: str,
        kind: Kind,
        now: int,
        roll: int,
        trusted: bool = False,
    ) -> Accept | Drop:
        """A new connection from `source` (a `source_key`); `roll` uniform in 0..99.

        `trusted`: an agent holding live tunnels is logged in from `source`.
        """
        self._advance(now)
        if conn in self._kinds:
            raise InvalidValue(f"connection {conn!r} is already admitted")
        drop = self._refusal(source, kind, roll, trusted=trusted and kind is Kind.SSH)
        if drop is not None:
            self.refusals[drop] += 1
            return Drop(reason=drop)
        self._kinds[conn] = kind
        if kind is Kind.SSH:
            grace = self.config.login_grace_ms
            self._pending[conn] = _Pending(source=source, deadline=now + grace if grace else None)
            self._per_source[source] += 1
        return Accept()

    def _refusal(self, source: str, kind: Kind, roll: int, *, trusted: bool) -> Reason | None:
        cfg = self.config
        room = cfg.ordinary_cap + (cfg.tunnel_reserve if trusted else 0)
        if self.total >= room:
            return Reason.CONNECTION_LIMIT
        if kind is Kind.PUBLIC:
            return None
        if self._per_source[source] >= cfg.per_source:
            return Reason.PER_SOURCE
        if not trusted and cfg.max_startups.drops(self.unauthenticated, roll):
            return Reason.MAX_STARTUPS
        return None

    def held(self, conn: Hashable, *, trusted: bool = False) -> Accept | Drop:
        """`conn` was admitted by another process's gate (a relay's supervisor), to be held here.

        Only this process's descriptors are checked (as `connect` checks them; a
        `trusted` one may take the tunnel reserve); admitted, it counts in `total`
        and nowhere else: its login is that gate's business. `closed` ends it.
        """
        if conn in self._kinds:
            raise InvalidValue(f"connection {conn!r} is already admitted")
        room = self.config.ordinary_cap + (self.config.tunnel_reserve if trusted else 0)
        if self.total >= room:
            self.refusals[Reason.CONNECTION_LIMIT] += 1
            return Drop(reason=Reason.CONNECTION_LIMIT)
        self._kinds[conn] = Kind.SSH
        return Accept()

    def auth_failed(self, conn: Hashable) -> Accept | Disconnect:
        """One failed authentication attempt (a wrong key or password) on `conn`."""
        if conn in self._doomed:
            return self._doomed[conn][0]
        pending = self._waiting(conn)
        pending.failures += 1
        if pending.failures >= self.config.max_auth_tries:
            return self._doom(conn, Reason.MAX_AUTH_TRIES)
        return Accept()

    def authenticated(self, conn: Hashable, *, holds_tunnels: bool) -> Accept | Disconnect:
        """`conn` logged in; `holds_tunnels`: its agent holds live tunnels on this relay."""
        if conn in self._doomed:
            return self._doomed[conn][0]
        pending = self._waiting(conn)
        if self.total > self.config.ordinary_cap and not holds_tunnels:
            # it sits in the reserve, which only agents with live tunnels may use
            return self._doom(conn, Reason.CONNECTION_LIMIT)
        del self._pending[conn]
        self._uncount(pending)
        return Accept()

    def closed(self, conn: Hashable) -> None:
        """`conn` is closed and its descriptor released (after any decision)."""
        if conn not in self._kinds:
            raise InvalidValue(f"connection {conn!r} closed but never admitted (or closed twice)")
        del self._kinds[conn]
        pending = self._pending.pop(conn, None)
        if conn in self._doomed:
            pending = self._doomed.pop(conn)[1]
        if pending is not None:
            self._uncount(pending)

    def expire(self, now: int) -> list[tuple[Hashable, Disconnect]]:
        """Connections whose login grace ended by `now`; each is returned once."""
        self._advance(now)
        due: list[tuple[Hashable, Disconnect]] = []
        while self._pending:
            conn, pending = next(iter(self._pending.items()))
            if pending.deadline is None or pending.deadline > now:
                break  # deadlines grow with admission order
            due.append((conn, self._doom(conn, Reason.LOGIN_GRACE)))
        return due

    def next_deadline(self) -> int | None:
        """When `expire` next has something to say (None: nothing is waiting)."""
        for pending in self._pending.values():
            return pending.deadline
        return None

    def _waiting(self, conn: Hashable) -> _Pending:
        try:
            return self._pending[conn]
        except KeyError:
            raise InvalidValue(f"connection {conn!r} is not waiting to log in") from None

    def _doom(self, conn: Hashable, reason: Reason) -> Disconnect:
        decision = Disconnect(reason=reason)
        self._doomed[conn] = (decision, self._pending.pop(conn))
        self.refusals[reason] += 1
        return decision

    def _uncount(self, pending: _Pending) -> None:
        self._per_source[pending.source] -= 1
        if not self._per_source[pending.source]:
            del self._per_source[pending.source]

    def _advance(self, now: int) -> None:
        if now < self._now:
            raise InvalidValue(f"time went back: {now} < {self._now}")
        self._now = now
