"""Relay-side sync arithmetic: deltas add up, time carries (lease rules: test_lease_rules)."""

from hypothesis import given
from hypothesis import strategies as st

from quota.core.relay_sync import Deltas, TimeCarry


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
