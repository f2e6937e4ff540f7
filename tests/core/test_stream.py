"""Pause reasons compose; stream states move only along the table; pauses are timed."""

import pytest

from quota.core.errors import IllegalTransition
from quota.core.stream import (
    PauseClock,
    PauseReason,
    PauseSet,
    StreamState,
    held_reason,
    transition,
)


def test_flow_resume_does_not_undo_a_quota_pause() -> None:
    """A side reads only when every reason is gone, whatever order they leave in."""
    reasons = PauseSet()
    assert reasons.add(PauseReason.QUOTA) is True
    assert reasons.add(PauseReason.FLOW) is False
    assert reasons.discard(PauseReason.FLOW) is False
    assert reasons and PauseReason.QUOTA in reasons
    assert reasons.discard(PauseReason.QUOTA) is True
    assert not reasons
    assert reasons.discard(PauseReason.QUOTA) is False


def test_illegal_transition_raises_and_changes_nothing() -> None:
    """A closed stream cannot reopen; open -> paused -> open -> closed is fine."""
    state = StreamState.OPENING
    for new in (StreamState.OPEN, StreamState.PAUSED, StreamState.OPEN, StreamState.CLOSED):
        state = transition(state, new)
    with pytest.raises(IllegalTransition, match="closed to open"):
        transition(state, StreamState.OPEN)
    assert state is StreamState.CLOSED


def test_pause_clock_counts_and_times_pauses() -> None:
    """Pauses are counted once each; a running pause counts towards the total."""
    clock = PauseClock()
    assert clock.pause(1000) and not clock.pause(1500)
    assert clock.total_ms(1600) == 600
    assert clock.resume(2000) and not clock.resume(2100)
    clock.pause(3000)
    assert (clock.count, clock.total_ms(3500), clock.paused) == (2, 1500, True)


def test_pause_clock_charges_each_moment_to_one_reason() -> None:
    """A pause switched between reasons splits its time; the parts add up to the total."""
    clock = PauseClock()
    clock.pause(0, PauseReason.LEASE)
    assert not clock.switch(5, PauseReason.LEASE)
    assert clock.switch(10, PauseReason.QUOTA) and clock.reason is PauseReason.QUOTA
    assert clock.reason_ms(PauseReason.QUOTA, 30) == 20
    clock.resume(40)
    clock.pause(100, PauseReason.LEASE)
    parts = {r: clock.reason_ms(r, 110) for r in (PauseReason.LEASE, PauseReason.QUOTA)}
    assert parts == {PauseReason.LEASE: 20, PauseReason.QUOTA: 30}
    assert sum(parts.values()) == clock.total_ms(110) == 50
    assert clock.count == 2


def test_held_reason_says_why_a_stream_waits_for_bytes() -> None:
    """Inactive first; then a lease on its way (LEASE) or billing's no / no billing (QUOTA)."""
    assert held_reason(inactive=True, can_pay=True) is PauseReason.INACTIVE
    assert held_reason(inactive=False, can_pay=True) is PauseReason.LEASE
    assert held_reason(inactive=False, can_pay=False) is PauseReason.QUOTA
