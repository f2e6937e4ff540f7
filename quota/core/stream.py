"""Stream states and the reasons a stream does not read.

Invariants:
- A stream reads from a side only when that side's pause set is empty. Pause
  reasons compose: a flow-control resume never undoes a quota pause.
- Stream states move only along `_TRANSITIONS`; an illegal move raises
  `IllegalTransition` and leaves the state unchanged.
- A paused stream's time is charged to exactly one logged reason at a time
  (the first of `LOGGED_REASONS` that holds), so the per-reason figures of a
  `PauseClock` add up to its total paused time.
"""

from __future__ import annotations

import enum

from quota.core.errors import IllegalTransition


class PauseReason(enum.Enum):
    """Why one side of a stream is not being read."""

    FLOW = "flow"  # the SSH channel toward the other side has no window left and its buffer is full
    BUFFER = "buffer"  # the relay's write buffer toward the other side's socket is above high water
    QUOTA = "quota"  # the owner's bucket is empty and billing can grant nothing more
    LEASE = "lease_wait"  # the owner's bucket is empty and a lease is on its way (it can pay)
    INACTIVE = "inactive"  # the owner has no active subscription
    OPERATOR = "operator"  # an operator paused it
    CONNECTING = "connecting"  # the other side is not connected yet


# The reasons the stream log records, in the order that decides which one a paused
# stream's time is charged to, with the name each has in the log. BUFFER, the
# relay's own write buffer filling up toward a peer that does not read, is logged
# as "flow" (backpressure); FLOW and CONNECTING never last long enough to matter.
LOGGED_REASONS: dict[PauseReason, str] = {
    PauseReason.INACTIVE: "inactive",
    PauseReason.OPERATOR: "operator",
    PauseReason.QUOTA: "quota",
    PauseReason.LEASE: "lease_wait",
    PauseReason.BUFFER: "flow",
}
HELD_REASONS = (PauseReason.QUOTA, PauseReason.LEASE, PauseReason.INACTIVE)


def held_reason(*, inactive: bool, can_pay: bool) -> PauseReason:
    """Why a stream whose bytes the bucket cannot pass waits.

    INACTIVE when the owner has no subscription; LEASE while the relay waits for
    a lease the account can pay for (billing has not said it has nothing more);
    QUOTA once billing granted less than asked, or when no billing API grants
    leases at all (a standalone relay's grants come only from its operator).
    """
    if inactive:
        return PauseReason.INACTIVE
    return PauseReason.LEASE if can_pay else PauseReason.QUOTA


def pause_bit(reason: PauseReason) -> int:
    """`reason` as one bit: a set of reasons is an int (an idle stream side holds no object)."""
    return _BIT[reason]


def reasons_of(bits: int) -> frozenset[PauseReason]:
    """The reasons whose bits are set in `bits`."""
    return frozenset(r for r, bit in _BIT.items() if bits & bit)


class PauseSet:
    """A set of pause reasons; reports only the edges (started / stopped pausing).

    Held as bits of one int (`pause_bit`); the relay's legs keep the int itself.
    """

    __slots__ = ("_bits",)

    def __init__(self) -> None:
        self._bits = 0

    def add(self, reason: PauseReason) -> bool:
        """Add `reason`; True when this turned a reading side into a paused one."""
        was_empty = not self._bits
        self._bits |= _BIT[reason]
        return was_empty

    def discard(self, reason: PauseReason) -> bool:
        """Remove `reason`; True when this left the set empty (the side may read)."""
        bit = _BIT[reason]
        if not self._bits & bit:
            return False
        self._bits &= ~bit
        return not self._bits

    def __contains__(self, reason: object) -> bool:
        bit = _BIT.get(reason) if isinstance(reason, PauseReason) else None
        return bit is not None and bool(self._bits & bit)

    def __bool__(self) -> bool:
        return bool(self._bits)

    @property
    def reasons(self) -> frozenset[PauseReason]:
        return reasons_of(self._bits)


_BIT = {reason: 1 << i for i, reason in enumerate(PauseReason)}


class StreamState(enum.Enum):
    OPENING = "opening"
    OPEN = "open"
    PAUSED = "paused"
    CLOSED = "closed"


_TRANSITIONS: dict[StreamState, frozenset[StreamState]] = {
    StreamState.OPENING: frozenset({StreamState.OPEN, StreamState.CLOSED}),
    StreamState.OPEN: frozenset({StreamState.PAUSED, StreamState.CLOSED}),
    StreamState.PAUSED: frozenset({StreamState.OPEN, StreamState.CLOSED}),
    StreamState.CLOSED: frozenset(),
}


def transition(current: StreamState, new: StreamState) -> StreamState:
    """Return `new` if the table allows current -> new, else raise."""
    if new not in _TRANSITIONS[current]:
        raise IllegalTransition(f"stream cannot move from {current.value} to {new.value}")
    return new


class PauseClock:
    """Counts pauses and paused time, in total and per logged reason (`now_ms` is the caller's).

    A running pause is charged to one reason at a time: `switch` moves the
    charge to another reason without starting a new pause.
    """

    __slots__ = ("_by_reason", "_reason", "_since", "_switched", "count", "paused_ms")

    def __init__(self) -> None:
        self.count = 0
        self.paused_ms = 0
        self._since: int | None = None
        self._reason: PauseReason | None = None
        self._switched = 0  # when the running pause was last charged to `_reason`
        self._by_reason: dict[PauseReason, int] | None = None  # made at the first pause

    def pause(self, now_ms: int, reason: PauseReason | None = None) -> bool:
        """Start a pause (charged to `reason`); False if one is already running."""
        if self._since is not None:
            return False
        self._since = self._switched = now_ms
        self._reason = reason
        self.count += 1
        return True

    def switch(self, now_ms: int, reason: PauseReason) -> bool:
        """Charge the running pause to `reason` from now on; False if none runs or no change."""
        if self._since is None or reason is self._reason:
            return False
        self._settle(now_ms)
        self._reason = reason
        return True

    def resume(self, now_ms: int) -> bool:
        """End the running pause; False if none was running."""
        if self._since is None:
            return False
        self._settle(now_ms)
        self.paused_ms += max(0, now_ms - self._since)
        self._since = self._reason = None
        return True

    def _settle(self, now_ms: int) -> None:
        if self._reason is not None:
            spent = max(0, now_ms - self._switched)
            by_reason = self._by_reason if self._by_reason is not None else {}
            by_reason[self._reason] = by_reason.get(self._reason, 0) + spent
            self._by_reason = by_reason
        self._switched = max(self._switched, now_ms)

    def total_ms(self, now_ms: int) -> int:
        """Paused time so far, counting a pause still running."""
        running = 0 if self._since is None else max(0, now_ms - self._since)
        return self.paused_ms + running

    def reason_ms(self, reason: PauseReason, now_ms: int) -> int:
        """Paused time charged to `reason` so far, counting a pause still running."""
        spent = 0 if self._by_reason is None else self._by_reason.get(reason, 0)
        if self._since is not None and reason is self._reason:
            spent += max(0, now_ms - self._switched)
        return spent

    @property
    def reason(self) -> PauseReason | None:
        """The reason the running pause is charged to (None: not paused, or no reason)."""
        return self._reason

    @property
    def paused(self) -> bool:
        return self._since is not None
