"""Stream decisions: when a stream opens, pauses, resumes, closes and what it logs.

A `StreamMachine` takes events and returns actions, the way h11 and mitmproxy's
layers do; it performs no I/O and keeps no clock (events carry `now_ms`). The
relay's dispatcher carries the actions out in order, with no await between a
decision and its effect. How many bytes of a chunk may pass is the bucket's
decision (quota.core.bucket); the machine hears of its outcome (`BytesHeld`,
`HeldCleared`, `Datagram`) and decides what the stream does about it.

Invariants (checked by the playbook and property tests):
- The state moves only along quota.core.stream's transition table; CLOSED is
  final and a machine returns `Close` exactly once, whatever events follow.
- A TCP stream is paused while a side holds bytes the bucket could not pass,
  for the reason `quota.core.stream.held_reason` gives (QUOTA, LEASE or
  INACTIVE); a new reason replaces the old one in the legs' pause sets without
  a moment of reading in between. It resumes (`LogRecord("resume")` first,
  then `Resume`) only when no side holds any. Flow-control pauses are their own
  reason and never undo a held one (they are separate members of each leg's
  pause set). An operator's pause (OPERATOR) holds until the operator resumes.
- A write buffer above its high-water mark (`BufferFull`) pauses the other
  side for BUFFER until it drains, whatever window the peer advertised. Such a
  pause is logged only once two interim ticks found it (it spans an interval):
  a busy stream's many short ones never are, a peer that stopped reading is.
  A stream is PAUSED while a logged reason (`LOGGED_REASONS`) holds; its paused
  time is charged to the first of them, and a change of that reason while
  paused writes a "reason" record (the pause goes on: no new pause is counted).
- A datagram stream never pauses a socket: a dropped datagram marks it paused
  in the log (for the reason its bucket gives), the next one that passes marks
  it open again.
- Log records: "open" once, "pause"/"resume" on each edge, "reason" when a
  paused stream's reason changes, "interim" while live, "close" once and only
  for a stream that was opened.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from quota.core.stream import (
    HELD_REASONS,
    LOGGED_REASONS,
    PauseClock,
    PauseReason,
    StreamState,
    held_reason,
    transition,
)


class Side(enum.Enum):
    UP = "up"  # the connecting side: support agent or public client
    DOWN = "down"  # the owner's side: the client agent


BOTH = (Side.UP, Side.DOWN)


def other(side: Side) -> Side:
    return Side.DOWN if side is Side.UP else Side.UP


# -- events ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LegConnected:
    """A leg connected; `all_connected` when no leg is still connecting."""

    all_connected: bool
    now_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LegLost:
    """A leg's transport is gone (peer reset, closed, channel closed)."""

    side: Side
    now_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EofBothWays:
    """Both directions forwarded their EOF: the stream is done."""

    now_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseRequested:
    """Close now (operator, shutdown, revoked key, grace expired, idle, refused).

    `close_legs` is False when the legs are already gone or never opened.
    """

    reason: str
    now_ms: int
    close_legs: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class BytesHeld:
    """A leg holds bytes the bucket could not pass, or the owner became inactive.

    `can_pay`: a lease is on its way (the bucket's `can_pay`), so the wait is LEASE.
    """

    inactive: bool
    now_ms: int
    can_pay: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldCleared:
    """A leg flushed its held bytes, or the owner became active; `holding` if any still holds."""

    holding: bool
    now_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowPaused:
    """The write buffer toward `side` is full: stop reading the other side."""

    side: Side


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowResumed:
    """The write buffer toward `side` drained: the other side may read again."""

    side: Side


@dataclass(frozen=True, slots=True, kw_only=True)
class BufferFull:
    """The relay's write buffer toward `side` went above its high-water mark."""

    side: Side
    now_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BufferDrained:
    """The relay's write buffer toward `side` drained to its low-water mark."""

    side: Side
    now_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Datagram:
    """A datagram stream's datagram passed the bucket whole, or was dropped.

    `inactive` and `can_pay` are the bucket's, and say why a drop happened.
    """

    passed: bool
    now_ms: int
    inactive: bool = False
    can_pay: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorPaused:
    """An operator paused the stream (`paused`), or resumed it."""

    paused: bool
    now_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Interim:
    """Time for a long-lived stream's interim record."""

    now_ms: int


Event = (
    LegConnected
    | LegLost
    | EofBothWays
    | CloseRequested
    | BytesHeld
    | HeldCleared
    | FlowPaused
    | FlowResumed
    | BufferFull
    | BufferDrained
    | Datagram
    | OperatorPaused
    | Interim
)


# -- actions -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Register:
    """Enter the live-stream table (the stream is open)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AttachPeers:
    """Join the legs: each drains what arrived early and may read."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Pause:
    """Add `reason` to the pause set of the legs on `sides`."""

    reason: PauseReason
    sides: tuple[Side, ...] = BOTH


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume:
    """Remove `reasons` from the pause sets of the legs on `sides`."""

    reasons: tuple[PauseReason, ...] = HELD_REASONS
    sides: tuple[Side, ...] = BOTH


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseLegs:
    """Close the transports of the legs on `sides`."""

    sides: tuple[Side, ...] = BOTH


@dataclass(frozen=True, slots=True, kw_only=True)
class LogRecord:
    """Write a stream-log record: open, pause, resume, reason, interim or close."""

    event: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Close:
    """The stream is closed: detach its meters, leave the live table, wake waiters."""

    reason: str


Action = Register | AttachPeers | Pause | Resume | CloseLegs | LogRecord | Close


_NO_SIDES: frozenset[Side] = frozenset()  # shared: an idle stream holds no set of its own


class StreamMachine:
    """The decisions of one stream (two legs, or one datagram flow)."""

    __slots__ = (
        "_buffer_logged",
        "_full",
        "_full_seen",
        "_full_since",
        "_holding",
        "_operator",
        "clock",
        "close_reason",
        "datagrams",
        "opened",
        "opened_at_ms",
        "state",
    )

    def __init__(self, *, opened_at_ms: int, datagrams: bool = False) -> None:
        self.state = StreamState.OPENING
        self.clock = PauseClock()
        self.opened_at_ms = opened_at_ms
        self.datagrams = datagrams  # UDP: nothing is held, no socket is paused
        self.opened = False
        self.close_reason = ""
        self._holding: PauseReason | None = None  # why the legs wait for bucket bytes
        self._operator = False  # an operator paused the stream
        self._full: frozenset[Side] = _NO_SIDES  # sides whose write buffer is above high water
        self._full_since = 0  # when `_full` last became non-empty
        self._full_seen = False  # an interim tick found the running buffer pause
        self._buffer_logged = False  # the running buffer pause was logged

    def handle(self, event: Event) -> tuple[Action, ...]:
        """Apply one event; return what the relay must do, in order."""
        if self.state is StreamState.CLOSED and not isinstance(event, FlowPaused | FlowResumed):
            return ()
        match event:
            case LegConnected():
                return self._connected(event)
            case LegLost():
                reason = "peer_closed" if event.side is Side.UP else "agent_closed"
                legs = CloseLegs(sides=(other(event.side),))
                return (legs, *self._close(reason, event.now_ms))
            case EofBothWays():
                return (CloseLegs(), *self._close("done", event.now_ms))
            case CloseRequested():
                first: tuple[Action, ...] = (CloseLegs(),) if event.close_legs else ()
                return (*first, *self._close(event.reason, event.now_ms))
            case BytesHeld():
                return self._held(event)
            case HeldCleared():
                return self._cleared(event)
            case FlowPaused():
                return self._flow(Pause(reason=PauseReason.FLOW, sides=(other(event.side),)))
            case FlowResumed():
                flow = Resume(reasons=(PauseReason.FLOW,), sides=(other(event.side),))
                return self._flow(flow)
            case BufferFull():
                return self._buffer_full(event)
            case BufferDrained():
                return self._buffer_drained(event)
            case Datagram():
                return self._datagram(event)
            case OperatorPaused():
                return self._operator_paused(event)
            case Interim():
                return (*self._buffer_check(event.now_ms), LogRecord(event="interim"))

    # -- one method per kind of event ---------------------------------------------------

    def _connected(self, event: LegConnected) -> tuple[Action, ...]:
        if self.state is not StreamState.OPENING or not event.all_connected:
            return ()
        self.state = transition(self.state, StreamState.OPEN)
        self.opened = True
        # a reason that came while connecting (the owner went inactive) pauses it at once
        return (Register(), LogRecord(event="open"), AttachPeers(), *self._settle(event.now_ms))

    def _close(self, reason: str, now_ms: int) -> tuple[Action, ...]:
        """The closing steps shared by every way a stream ends; reached once per machine."""
        self.state = transition(self.state, StreamState.CLOSED)
        self.clock.resume(now_ms)
        self.close_reason = reason
        log: tuple[Action, ...] = (LogRecord(event="close"),) if self.opened else ()
        return (*log, Close(reason=reason))

    def _held(self, event: BytesHeld) -> tuple[Action, ...]:
        if self.datagrams:
            return ()  # nothing to pause: datagrams that do not fit are dropped as they come
        reason = held_reason(inactive=event.inactive, can_pay=event.can_pay)
        old, self._holding = self._holding, reason
        if reason is old:
            return ()
        # the new reason joins the pause sets before the old one leaves: no read in between
        legs: tuple[Action, ...] = (Pause(reason=reason),)
        if old is not None:
            legs += (Resume(reasons=(old,)),)
        return (*legs, *self._settle(event.now_ms))

    def _cleared(self, event: HeldCleared) -> tuple[Action, ...]:
        if self.datagrams or event.holding or self._holding is None:
            return ()
        self._holding = None
        return (*self._settle(event.now_ms), Resume())

    def _operator_paused(self, event: OperatorPaused) -> tuple[Action, ...]:
        if self.datagrams or event.paused is self._operator:
            return ()
        self._operator = event.paused
        if event.paused:
            return (Pause(reason=PauseReason.OPERATOR), *self._settle(event.now_ms))
        return (*self._settle(event.now_ms), Resume(reasons=(PauseReason.OPERATOR,)))

    def _buffer_full(self, event: BufferFull) -> tuple[Action, ...]:
        if self.state is StreamState.OPENING:
            return ()  # the legs are not joined: nothing was written toward a side yet
        if not self._full:
            self._full_since, self._full_seen = event.now_ms, False
        self._full = self._full | {event.side}
        return (Pause(reason=PauseReason.BUFFER, sides=(other(event.side),)),)

    def _buffer_drained(self, event: BufferDrained) -> tuple[Action, ...]:
        if event.side not in self._full:
            return ()
        self._full = self._full - {event.side} or _NO_SIDES
        resume = Resume(reasons=(PauseReason.BUFFER,), sides=(other(event.side),))
        if self._full or not self._buffer_logged:
            return (resume,)
        self._buffer_logged = False
        return (*self._settle(event.now_ms), resume)

    def _buffer_check(self, now_ms: int) -> tuple[Action, ...]:
        """At an interim tick: log a buffer pause the previous tick already found running."""
        if not self._full or self._buffer_logged:
            return ()
        if not self._full_seen:
            self._full_seen = True
            return ()
        self._buffer_logged = True
        return self._settle(now_ms, since_ms=self._full_since)

    def _logged_reason(self) -> PauseReason | None:
        """The logged reason a paused stream's time is charged to now (None: none holds)."""
        holding = {self._holding}
        if self._operator:
            holding.add(PauseReason.OPERATOR)
        if self._buffer_logged:
            holding.add(PauseReason.BUFFER)
        return next((r for r in LOGGED_REASONS if r in holding), None)

    def _settle(self, now_ms: int, since_ms: int | None = None) -> tuple[Action, ...]:
        """A logged reason began, ended or changed: pause, resume or re-reason the log.

        A pause found running only now (a buffer pause, at its second tick) is
        dated from `since_ms`.
        """
        reason = self._logged_reason()
        if self.state is StreamState.OPEN and reason is not None:
            self._mark_paused(now_ms if since_ms is None else since_ms, reason)
            return (LogRecord(event="pause"),)
        if self.state is not StreamState.PAUSED:
            return ()
        if reason is None:
            self._mark_open(now_ms)
            return (LogRecord(event="resume"),)
        if self.clock.switch(now_ms, reason):
            return (LogRecord(event="reason"),)
        return ()

    def _flow(self, action: Action) -> tuple[Action, ...]:
        # Before the legs are joined neither has a peer whose buffer could fill.
        return () if self.state is StreamState.OPENING else (action,)

    def _datagram(self, event: Datagram) -> tuple[Action, ...]:
        if event.passed and self.state is StreamState.PAUSED:
            self._mark_open(event.now_ms)
            return (LogRecord(event="resume"),)
        if event.passed or self.state is StreamState.OPENING:
            return ()
        reason = held_reason(inactive=event.inactive, can_pay=event.can_pay)
        if self.state is StreamState.OPEN:
            self._mark_paused(event.now_ms, reason)
            return (LogRecord(event="pause"),)
        if self.clock.switch(event.now_ms, reason):
            return (LogRecord(event="reason"),)
        return ()

    def _mark_paused(self, now_ms: int, reason: PauseReason) -> None:
        self.state = transition(self.state, StreamState.PAUSED)
        self.clock.pause(now_ms, reason)

    def _mark_open(self, now_ms: int) -> None:
        self.state = transition(self.state, StreamState.OPEN)
        self.clock.resume(now_ms)


@dataclass(frozen=True, slots=True, kw_only=True)
class WantGrant:
    """Ask the billing API for more bytes for this agent now (low water crossed)."""

    agent_id: str
    remaining: int


class GrantWatch:
    """Which buckets asked for a grant: one `True` per crossing of the low-water mark."""

    __slots__ = ("_wanting",)

    def __init__(self) -> None:
        self._wanting: set[str] = set()

    def check(self, agent_id: str, wants: bool, remaining: int) -> WantGrant | None:
        """A `WantGrant` when `agent_id` just started wanting a grant (ask billing now)."""
        if not wants:
            self._wanting.discard(agent_id)
            return None
        if agent_id in self._wanting:
            return None
        self._wanting.add(agent_id)
        return WantGrant(agent_id=agent_id, remaining=remaining)

    def forget(self, agent_id: str) -> None:
        """`agent_id`'s bucket is gone: a new one starts from not wanting."""
        self._wanting.discard(agent_id)
