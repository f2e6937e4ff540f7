"""Rate-limited log decisions: one line per key per minute, the rest counted, memory bounded."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota.core.errors import InvalidValue
from quota.core.throttle import LogNow, LogThrottle, Suppress

MINUTE = 60_000


def test_one_line_a_minute_with_the_number_suppressed() -> None:
    """300 auth failures from one source in a minute give one line, then one saying 299."""
    throttle = LogThrottle()
    first = [throttle.note("198.51.100.7", now=i * 100) for i in range(300)]
    assert first[0] == LogNow(key="198.51.100.7", suppressed=0)
    assert set(first[1:]) == {Suppress()}
    assert throttle.note("198.51.100.7", now=MINUTE) == LogNow(key="198.51.100.7", suppressed=299)


def test_sources_are_throttled_apart() -> None:
    """A noisy source does not silence another one."""
    throttle = LogThrottle()
    throttle.note("a", now=0)
    assert throttle.note("a", now=1) == Suppress()
    assert throttle.note("b", now=2) == LogNow(key="b", suppressed=0)


def test_flush_reports_ended_windows_and_keeps_lines_a_minute_apart() -> None:
    """flush gives the count of an ended window; that key's next line waits a minute more."""
    throttle = LogThrottle()
    throttle.note("a", now=0)
    throttle.note("a", now=10)
    throttle.note("quiet", now=20)
    assert throttle.flush(now=MINUTE + 20) == [LogNow(key="a", suppressed=1)]
    assert len(throttle) == 1  # "quiet" owed nothing and is forgotten
    assert throttle.note("a", now=MINUTE + 30) == Suppress()
    assert throttle.note("a", now=2 * MINUTE + 20) == LogNow(key="a", suppressed=1)


def test_drain_reports_every_window_still_owing_a_line() -> None:
    """At exit, windows not yet ended give their counts too; nothing is left owed."""
    throttle = LogThrottle()
    for i in range(5):
        throttle.note("a", now=i)
    throttle.note("quiet", now=5)
    assert throttle.drain(now=10) == [LogNow(key="a", suppressed=4)]
    assert len(throttle) == 0 and throttle.flush(now=10 * MINUTE) == []


def test_a_flood_of_sources_shares_one_overflow_line() -> None:
    """Past max_keys, new sources are throttled together under "*"."""
    throttle = LogThrottle(max_keys=2)
    throttle.note("a", now=0)
    throttle.note("b", now=0)
    decisions = [throttle.note(f"spoofed-{i}", now=1) for i in range(1000)]
    assert decisions[0] == LogNow(key="*", suppressed=0)
    assert set(decisions[1:]) == {Suppress()}
    assert len(throttle) == 3


def test_quiet_ended_windows_make_room_for_new_sources() -> None:
    """A source silent for a minute no longer takes a place."""
    throttle = LogThrottle(max_keys=1)
    throttle.note("a", now=0)
    assert throttle.note("b", now=MINUTE) == LogNow(key="b", suppressed=0)


def test_bad_settings_and_time_going_back_are_refused() -> None:
    """Caller mistakes raise InvalidValue."""
    with pytest.raises(InvalidValue, match="bad log throttle"):
        LogThrottle(interval_ms=0)
    throttle = LogThrottle()
    throttle.note("a", now=5)
    with pytest.raises(InvalidValue, match="time went back"):
        throttle.note("a", now=4)


@given(
    events=st.lists(
        st.tuples(st.sampled_from("abcdefg"), st.integers(0, 30_000), st.booleans()),
        max_size=200,
    )
)
def test_no_event_is_lost_and_lines_are_an_interval_apart(
    events: list[tuple[str, int, bool]],
) -> None:
    """Lines plus their suppressed counts equal the events; one key's lines >= 60 s apart."""
    throttle = LogThrottle(max_keys=4)
    now, counted = 0, 0
    lines: list[tuple[int, LogNow]] = []
    for key, step, flush in events:
        now += step
        decision = throttle.note(key, now)
        if isinstance(decision, LogNow):
            lines.append((now, decision))
            counted += 1  # the event that is logged
        if flush:
            lines += [(now, line) for line in throttle.flush(now)]
        assert len(throttle) <= 5
    lines += [(now + MINUTE, line) for line in throttle.flush(now + MINUTE)]
    last_line: dict[str, int] = {}
    for at, line in lines:
        assert at - last_line.get(line.key, -MINUTE) >= MINUTE
        last_line[line.key] = at
        counted += line.suppressed
    assert counted == len(events)
