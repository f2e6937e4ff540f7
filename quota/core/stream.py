"""Stream states and the reasons a stream does not read.

Invariants:
- A stream reads from a side only when that side's pause set is empty. Pause
  reasons compose: a flow-control resume never undoes a quota pause.
- Stream states move only along `_TRANSITIONS`; an illegal move raises
  `IllegalTransition` and leaves the state unchanged.
"""

from __future__ import annotations

import enum

from quota.core.errors import IllegalTransition


class PauseReason(enum.Enum):
    """Why one side of a stream is not being read."""

    FLOW = "flow"  # the SSH channel toward the other side has no window left and its buffer is full
    BUFFER = "buffer"  # the relay's write buffer toward the other side's socket is above high water
    QUOTA = "quota"  # the owner's bucket is empty
    INACTIVE = "inactive"  # the owner has no active subscription
    OPERATOR = "operator"  # an operator paused it
    CONNECTING = "connecting"  # the other side is not connected yet


class PauseSet:
    """A set of pause reasons; reports only the edges (started / stopped pausing).

    Held as bits of one int (no set object per stream side: idle streams stay small).
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
        return frozenset(r for r, bit in _BIT.items() if self._bits & bit)


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
    """Counts pauses and the total paused time of a stream; `now_ms` comes from the caller."""

    __slots__ = ("_since", "count", "paused_ms")

    def __init__(self) -> None:
        self.count = 0
        self.paused_ms = 0
        self._since: int | None = None

    def pause(self, now_ms: int) -> bool:
        """Start a pause; False if one is already running."""
        if self._since is not None:
            return False
        self._since = now_ms
        self.count += 1
        return True

    def resume(self, now_ms: int) -> bool:
        """End the running pause; False if none was running."""
        if self._since is None:
            return False
        self.paused_ms += max(0, now_ms - self._since)
        self._since = None
        return True

    def total_ms(self, now_ms: int) -> int:
        """Paused time so far, counting a pause still running."""
        running = 0 if self._since is None else max(0, now_ms - self._since)
        return self.paused_ms + running

    @property
    def paused(self) -> bool:
        return self._since is not None
