"""Backoff with jitter: doubles, stops at the cap, and jitters within its bounds."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota.core.backoff import backoff_ms
from quota.core.errors import InvalidValue


def test_without_jitter_the_wait_doubles_up_to_the_cap() -> None:
    """With no jitter the waits are first, 2x, 4x ... and then the cap, exactly."""
    waits = [backoff_ms(n, first_ms=250, cap_ms=3000, jitter=0, draw=0.99) for n in range(6)]
    assert waits == [250, 500, 1000, 2000, 3000, 3000]
    assert backoff_ms(40, first_ms=200, jitter=0, draw=0) == 200 << 30  # no cap: bounded growth


def test_the_jitter_range_ends_are_reached() -> None:
    """Draw 0 gives the low end (half the wait), a draw just under 1 the full wait."""
    assert backoff_ms(1, first_ms=250, cap_ms=15_000, draw=0.0) == 250
    assert backoff_ms(1, first_ms=250, cap_ms=15_000, draw=0.999_999) == 500
    assert backoff_ms(0, first_ms=7, draw=0.0) == 3  # odd waits: as randint(w // 2, w)
    assert backoff_ms(0, first_ms=7, draw=0.999_999) == 7


@given(
    attempt=st.integers(0, 100),
    first=st.integers(0, 100_000),
    cap=st.integers(0, 10**7),
    jitter=st.floats(0, 1),
    draw=st.floats(0, 1, exclude_max=True),
)
def test_wait_stays_within_its_bounds(
    attempt: int, first: int, cap: int, jitter: float, draw: float
) -> None:
    """Any wait lies in [w - ceil(w * jitter), w] for w = min(cap, first * 2**attempt)."""
    full = min(cap, first * 2 ** min(attempt, 30))
    wait = backoff_ms(attempt, first_ms=first, cap_ms=cap, jitter=jitter, draw=draw)
    assert full - math.ceil(full * jitter) <= wait <= full


def test_a_uniform_draw_covers_every_wait_in_the_range() -> None:
    """Seeded uniform draws hit every integer of [w // 2, w], as randint would."""
    draw = random.Random(7).random
    seen = {backoff_ms(0, first_ms=10, draw=draw()) for _ in range(2000)}
    assert seen == set(range(5, 11))


def test_bad_arguments_are_refused() -> None:
    """Negative attempts or waits, and draws outside [0, 1), are caller errors."""
    for kwargs in ({"attempt": -1}, {"first_ms": -1}, {"draw": 1.0}, {"jitter": 1.5}):
        args = {"attempt": 0, "first_ms": 10, "draw": 0.5, **kwargs}
        with pytest.raises(InvalidValue):
            backoff_ms(args.pop("attempt"), **args)  # type: ignore[arg-type]
