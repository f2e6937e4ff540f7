"""Pause reasons compose; stream states move only along the table; pauses are timed."""

import pytest

from quota.core.errors import IllegalTransition
from quota.core.stream import PauseClock, PauseReason, PauseSet, StreamState, transition


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
