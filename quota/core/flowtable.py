"""A UDP tunnel's flow table: bounded, never closed to new peers, fair per source.

Invariants:
- At most `max_flows` flows, and at most `per_source` of one source address.
  A new peer is never refused: when its source already has `per_source` flows,
  that source's least recently active flow is evicted; otherwise, when the
  table is full, the least recently active flow of all is evicted. A flood of
  one-datagram flows therefore pushes out only the idlest flows, and a busy
  flow is never evicted while an idler one exists (in its source, or at all).
- Activity order is kept by OrderedDicts moved to the end on every touch, so
  touch, evict and expire are O(1) amortised. `now` never goes back.
- A flow that never got an answer is not logged on its own: when it ends it is
  summed into one `UnansweredRow` per tunnel per interval (flows, bytes passed
  and dropped), so a spoofed flood writes a row an interval, not a row a datagram.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from quota.core.errors import InvalidValue

P = TypeVar("P", bound=Hashable)  # a peer: (host, port), or a flow id


class EndReason(enum.Enum):
    EVICTED_FULL = "evicted_full"  # the table was full and a new peer came
    EVICTED_SOURCE = "evicted_source"  # its source had per_source flows and opened another
    IDLE = "idle"
    CLOSED = "closed"  # the shell removed it (tunnel gone, shutdown)


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowTableConfig:
    max_flows: int = 4096
    per_source: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.per_source <= self.max_flows:
            raise InvalidValue(
                f"udp flows: need 1 <= per_source ({self.per_source}) <= max_flows "
                f"({self.max_flows})"
            )


@dataclass(slots=True)
class _Flow:
    source: str
    opened_at: int
    last_at: int
    bytes_in: int = 0  # from the peer
    bytes_out: int = 0  # answers to the peer


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowEnd(Generic[P]):
    """A flow that ended: close it, then log it alone or add it to the unanswered summary."""

    peer: P
    source: str
    reason: EndReason
    opened_at: int
    last_at: int
    bytes_in: int
    bytes_out: int

    @property
    def answered(self) -> bool:
        return self.bytes_out > 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Touched(Generic[P]):
    """A datagram of `peer` counted; `opened` if it is a new flow, with any flow it pushed out."""

    opened: bool
    evicted: FlowEnd[P] | None = None


class FlowTable(Generic[P]):
    """The live flows of one tunnel, least recently active first."""

    def __init__(self, config: FlowTableConfig | None = None) -> None:
        self.config = config or FlowTableConfig()
        self._flows: OrderedDict[P, _Flow] = OrderedDict()
        self._by_source: dict[str, OrderedDict[P, None]] = {}
        self._now = 0

    def __len__(self) -> int:
        return len(self._flows)

    def __contains__(self, peer: object) -> bool:
        return peer in self._flows

    def of_source(self, source: str) -> int:
        return len(self._by_source.get(source, ()))

    def oldest(self) -> P | None:
        """The least recently active peer (the next one a full table evicts)."""
        return next(iter(self._flows), None)

    def touch(self, peer: P, *, source: str, now: int, nbytes: int = 0) -> Touched[P]:
        """A datagram from `peer` (at `source`) arrived at `now`."""
        self._advance(now)
        flow = self._flows.get(peer)
        if flow is not None:
            self._refresh(peer, flow, now)
            flow.bytes_in += nbytes
            return Touched(opened=False)
        evicted = self._make_room(source)
        self._flows[peer] = _Flow(source=source, opened_at=now, last_at=now, bytes_in=nbytes)
        self._by_source.setdefault(source, OrderedDict())[peer] = None
        return Touched(opened=True, evicted=evicted)

    def answer(self, peer: P, *, now: int, nbytes: int) -> bool:
        """An answer of `nbytes` went to `peer`; True the first time (log the flow from now on)."""
        self._advance(now)
        flow = self._flows.get(peer)
        if flow is None:
            raise InvalidValue(f"answer to {peer!r}: no such flow")
        first = flow.bytes_out == 0 and nbytes > 0
        flow.bytes_out += nbytes
        self._refresh(peer, flow, now)
        return first

    def expire(self, *, now: int, idle_ms: int) -> list[FlowEnd[P]]:
        """End every flow idle for `idle_ms` or more, the idlest first."""
        self._advance(now)
        ended: list[FlowEnd[P]] = []
        while self._flows:
            peer, flow = next(iter(self._flows.items()))
            if now - flow.last_at < idle_ms:
                break
            ended.append(self._end(peer, EndReason.IDLE))
        return ended

    def remove(self, peer: P) -> FlowEnd[P]:
        """The shell closed `peer`'s flow (tunnel gone, shutdown)."""
        if peer not in self._flows:
            raise InvalidValue(f"remove {peer!r}: no such flow")
        return self._end(peer, EndReason.CLOSED)

    def _make_room(self, source: str) -> FlowEnd[P] | None:
        mine = self._by_source.get(source)
        if mine is not None and len(mine) >= self.config.per_source:
            return self._end(next(iter(mine)), EndReason.EVICTED_SOURCE)
        if len(self._flows) >= self.config.max_flows:
            return self._end(next(iter(self._flows)), EndReason.EVICTED_FULL)
        return None

    def _refresh(self, peer: P, flow: _Flow, now: int) -> None:
        flow.last_at = now
        self._flows.move_to_end(peer)
        self._by_source[flow.source].move_to_end(peer)

    def _end(self, peer: P, reason: EndReason) -> FlowEnd[P]:
        flow = self._flows.pop(peer)
        mine = self._by_source[flow.source]
        del mine[peer]
        if not mine:
            del self._by_source[flow.source]
        return FlowEnd(
            peer=peer,
            source=flow.source,
            reason=reason,
            opened_at=flow.opened_at,
            last_at=flow.last_at,
            bytes_in=flow.bytes_in,
            bytes_out=flow.bytes_out,
        )

    def _advance(self, now: int) -> None:
        if now < self._now:
            raise InvalidValue(f"time went back: {now} < {self._now}")
        self._now = now


@dataclass(frozen=True, slots=True, kw_only=True)
class UnansweredRow:
    """One stream-log row for the flows of a tunnel that ended without an answer."""

    tunnel: str
    since: int
    until: int
    flows: int
    bytes_in: int
    bytes_dropped: int = 0  # of those flows' datagrams, dropped instead of passed


@dataclass(slots=True)
class _Tally:
    since: int
    flows: int = 0
    bytes_in: int = 0
    bytes_dropped: int = 0


class UnansweredSummary:
    """Sums unanswered flows per tunnel; one row per tunnel per `interval_ms`."""

    def __init__(self, interval_ms: int = 60_000) -> None:
        if interval_ms <= 0:
            raise InvalidValue(f"unanswered summary interval must be > 0, not {interval_ms}")
        self.interval_ms = interval_ms
        self._tallies: OrderedDict[str, _Tally] = OrderedDict()  # oldest interval first

    def add(self, tunnel: str, end: FlowEnd[P], *, now: int, dropped: int = 0) -> None:
        """Count an ended flow that never got an answer (answered ones are logged alone).

        `dropped` is what the shell dropped of the flow's datagrams (quota, size).
        """
        if end.answered:
            raise InvalidValue(f"flow {end.peer!r} was answered: log it alone")
        if dropped < 0:
            raise InvalidValue(f"dropped bytes must be >= 0, not {dropped}")
        tally = self._tallies.get(tunnel)
        if tally is None:
            tally = self._tallies[tunnel] = _Tally(since=now)
        tally.flows += 1
        tally.bytes_in += end.bytes_in
        tally.bytes_dropped += dropped

    def flush(self, now: int) -> list[UnansweredRow]:
        """Rows for the tunnels whose interval has ended by `now`."""
        rows: list[UnansweredRow] = []
        while self._tallies:
            tunnel, tally = next(iter(self._tallies.items()))
            if now - tally.since < self.interval_ms:
                break
            rows.append(self._row(tunnel, now))
        return rows

    def __len__(self) -> int:
        """Tunnels with a pending row."""
        return len(self._tallies)

    def pending(self) -> dict[str, tuple[int, int, int]]:
        """What each tunnel's pending row sums so far: (flows, bytes in, bytes dropped)."""
        return {t: (x.flows, x.bytes_in, x.bytes_dropped) for t, x in self._tallies.items()}

    def drain(self, now: int, tunnel: str | None = None) -> list[UnansweredRow]:
        """The pending row of `tunnel` (it ended), or every pending row (the relay stops)."""
        tunnels = list(self._tallies) if tunnel is None else [tunnel]
        return [self._row(t, now) for t in tunnels if t in self._tallies]

    def _row(self, tunnel: str, now: int) -> UnansweredRow:
        tally = self._tallies.pop(tunnel)
        return UnansweredRow(
            tunnel=tunnel,
            since=tally.since,
            until=now,
            flows=tally.flows,
            bytes_in=tally.bytes_in,
            bytes_dropped=tally.bytes_dropped,
        )
