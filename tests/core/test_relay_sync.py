"""Relay-side sync arithmetic: deltas add up, time carries, wants cover waiters."""

from hypothesis import given
from hypothesis import strategies as st

from quota.core.relay_sync import Deltas, TimeCarry, want_bytes


@given(st.lists(st.integers(0, 10**6), max_size=50))
def test_deltas_add_up_to_the_last_cumulative_value(steps: list[int]) -> None:
    """Deltas of a growing counter sum to its final value: nothing twice, nothing lost."""
    deltas, total, reported = Deltas(), 0, 0
    for step in steps:
        total += step
        reported += deltas.delta("a", total)
    assert reported == total


def test_restarted_counter_counts_from_zero() -> None:
    """A counter lower than its mark restarted: all of it is new."""
    deltas = Deltas()
    assert (deltas.delta("a", 500), deltas.delta("a", 200), deltas.delta("a", 250)) == (
        500,
        200,
        50,
    )


@given(st.lists(st.integers(0, 5000), max_size=50))
def test_time_carry_never_overreports(chunks: list[int]) -> None:
    """Reported seconds never exceed elapsed time and trail it by under a second."""
    carry, seconds = TimeCarry(), 0
    for ms in chunks:
        seconds += carry.seconds("t", ms)
    assert 0 <= sum(chunks) - seconds * 1000 < 1000


def test_want_covers_waiters_and_rate() -> None:
    """A want covers what waits plus two intervals of use, and never less than the floor."""
    assert want_bytes(short=0, recent=0, floor=1000) == 1000
    assert want_bytes(short=500, recent=2000, floor=1000) == 4500
