"""Auth failures per source: a limit per window, Retry-After within the window, bounded memory."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota.core.authfail import AuthFailures
from quota.core.errors import InvalidValue


def test_a_source_past_the_limit_waits_until_its_window_ends() -> None:
    """Three failures allowed per 10 s: the fourth attempt waits for what is left of the window."""
    fails = AuthFailures(limit=3, window_ms=10_000)
    for t in (0, 1_000, 2_000):
        assert fails.retry_after_ms("a", t) == 0
        fails.failed("a", t)
    assert fails.retry_after_ms("a", 4_000) == 6_000
    assert fails.retry_after_ms("b", 4_000) == 0  # other sources are not affected
    assert fails.retry_after_ms("a", 10_000) == 0  # a new window
    fails.failed("a", 10_000)
    assert fails.retry_after_ms("a", 10_001) == 0


def test_memory_is_bounded_by_evicting_the_oldest_source() -> None:
    """A flood of sources keeps at most max_sources windows."""
    fails = AuthFailures(limit=1, window_ms=60_000, max_sources=100)
    for n in range(1_000):
        fails.failed(f"10.0.{n // 256}.{n % 256}", n)
    assert len(fails) == 100
    assert fails.retry_after_ms("10.0.3.231", 1_000) > 0  # the newest are kept


def test_bad_settings_and_time_going_back_are_refused() -> None:
    """A limit below 1, an empty window or a clock that goes back is an error."""
    with pytest.raises(InvalidValue):
        AuthFailures(limit=0)
    fails = AuthFailures()
    fails.failed("a", 5)
    with pytest.raises(InvalidValue):
        fails.retry_after_ms("a", 4)


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 5_000)), max_size=200))
def test_retry_after_never_exceeds_the_window(events: list[tuple[str, int]]) -> None:
    """Whatever the failures, a wait is 0 or within one window, and past the limit only."""
    fails = AuthFailures(limit=4, window_ms=1_000)
    now = 0
    for source, step in events:
        now += step
        wait = fails.retry_after_ms(source, now)
        assert 0 <= wait <= 1_000
        if wait == 0:
            fails.failed(source, now)
    assert len(fails) <= 3
