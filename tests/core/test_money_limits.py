"""Money cannot leak: a documented maximum, checked sums, ASCII amounts, an honest plan refund."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota.core.billing import catalogue_from_config
from quota.core.errors import InvalidValue
from quota.core.money import (
    GB,
    MAX_COUNTER,
    MAX_MILLICOINS,
    MAX_MONEY,
    OverLimit,
    Rate,
    checked_add,
    metered_rate,
    parse_coin,
    plan_change_credit,
    prorate_credit,
)
from quota.core.units import MAX_BYTES

DAY = 86_400_000
PERIOD = 30 * DAY


def test_the_maximum_is_the_wire_schema_maximum() -> None:
    """Balances and counters share 2**62, the integer maximum of the wire schema and OpenAPI."""
    assert MAX_MILLICOINS == MAX_COUNTER == MAX_MONEY == MAX_BYTES == 2**62


def test_checked_add_refuses_the_issue_deposits_naming_the_limit() -> None:
    """A 2**62 deposit then a deposit of 1 is refused with the limit, not stored."""
    balance = checked_add(0, 2**62, what="balance")
    with pytest.raises(OverLimit, match=r"balance would exceed its maximum of 4611686018427387904"):
        checked_add(balance, 1, what="balance")


def test_over_limit_is_an_invalid_value_carrying_the_limit() -> None:
    """OverLimit is caught where InvalidValue is (a 4xx), and says which limit."""
    with pytest.raises(InvalidValue) as caught:
        checked_add(2**62, 2**62, what="used_total", limit=MAX_COUNTER)
    assert isinstance(caught.value, OverLimit)
    assert (caught.value.what, caught.value.limit) == ("used_total", MAX_COUNTER)


def test_checked_add_refuses_going_below_zero() -> None:
    """A withdrawal past zero is refused too, naming the quantity."""
    with pytest.raises(InvalidValue, match="balance would fall below zero"):
        checked_add(5, -6, what="balance")


@given(value=st.integers(0, 2**62), delta=st.integers(-(2**63), 2**63))
def test_checked_add_keeps_every_result_within_the_schema(value: int, delta: int) -> None:
    """Whatever is added, a result is 0..MAX and equals the plain sum; otherwise refused."""
    try:
        total = checked_add(value, delta, what="balance")
    except InvalidValue:
        assert not 0 <= value + delta <= MAX_MILLICOINS
    else:
        assert total == value + delta and 0 <= total <= MAX_MILLICOINS


@pytest.mark.parametrize("text", ["\uff11\uff19", "1\u0669", "\uff10.\uff15", "19.\uff15"])
def test_parse_coin_refuses_non_ascii_digits(text: str) -> None:
    """An amount takes ASCII digits only."""
    with pytest.raises(InvalidValue, match="not an amount of coin"):
        parse_coin(text)


def test_parse_coin_refuses_a_5000_digit_amount_fast() -> None:
    """A 5000-digit amount is refused by its length (it used to raise a bare ValueError)."""
    started = time.perf_counter()
    for _ in range(1000):
        with pytest.raises(InvalidValue, match=r"amount of coin too long: 5000 characters"):
            parse_coin("9" * 5000)
    assert time.perf_counter() - started < 0.5


def test_plan_change_credit_without_use_is_the_prorated_price() -> None:
    """An agent that used nothing gets the plain proration back."""
    cheap = Rate(price=8_000, per=100 * GB)
    for left in (0, DAY, 15 * DAY, PERIOD):
        expected = prorate_credit(19_000, PERIOD, left)
        got = plan_change_credit(
            price=19_000,
            period_ms=PERIOD,
            remaining_ms=left,
            included=50 * GB,
            included_left=50 * GB,
            byte_price=cheap,
        )
        assert got == expected


def test_plan_change_credit_deducts_traffic_used_beyond_the_elapsed_share() -> None:
    """pro (19 coin, 50 GB) left at once after 50 GB: 19 - 50 GB x 0.08 = 15 coin back."""
    credit = plan_change_credit(
        price=19_000,
        period_ms=PERIOD,
        remaining_ms=PERIOD,
        included=50 * GB,
        included_left=0,
        byte_price=Rate(price=8_000, per=100 * GB),
    )
    assert credit == 15_000
    own_price = Rate(price=19_000, per=50 * GB)  # valued at the plan's own price per byte
    assert (
        plan_change_credit(
            price=19_000,
            period_ms=PERIOD,
            remaining_ms=PERIOD,
            included=50 * GB,
            included_left=0,
            byte_price=own_price,
        )
        == 0
    )


def test_plan_change_credit_spares_use_within_the_elapsed_share() -> None:
    """Half the period gone and half the bucket used: the full half price comes back."""
    credit = plan_change_credit(
        price=19_000,
        period_ms=PERIOD,
        remaining_ms=PERIOD // 2,
        included=50 * GB,
        included_left=25 * GB,
        byte_price=Rate(price=19_000, per=50 * GB),
    )
    assert credit == 9_500


def test_plan_change_credit_refuses_an_impossible_bucket() -> None:
    """More left than included is a caller error."""
    with pytest.raises(InvalidValue, match="bad plan bucket"):
        plan_change_credit(
            price=1,
            period_ms=1,
            remaining_ms=0,
            included=5,
            included_left=6,
            byte_price=Rate(price=1, per=1),
        )


@given(
    price=st.integers(0, 10**7),
    included=st.integers(0, 10**13),
    used_share=st.integers(0, 1000),
    left_ms=st.integers(-10, PERIOD + 10),
    byte_num=st.integers(0, 10**4),
)
def test_plan_change_credit_never_refunds_used_traffic(
    price: int, included: int, used_share: int, left_ms: int, byte_num: int
) -> None:
    """0 <= credit <= proration, and the price kept pays every used byte at byte_price."""
    used = included * used_share // 1000
    byte_price = Rate(price=byte_num, per=10**9)
    if included and byte_price.price * included > price * byte_price.per:
        byte_price = Rate(price=price, per=included)  # never above the plan's own price a byte
    credit = plan_change_credit(
        price=price,
        period_ms=PERIOD,
        remaining_ms=left_ms,
        included=included,
        included_left=included - used,
        byte_price=byte_price,
    )
    assert 0 <= credit <= prorate_credit(price, PERIOD, left_ms)
    # what the agent keeps paying for the old plan covers every byte it used at byte_price
    assert (price - credit) * byte_price.per >= used * byte_price.price


def test_lowest_byte_price_of_the_example_catalogue() -> None:
    """The 100G package at 8 coin (0.08 coin/GB) undercuts metering and every plan."""
    cat = catalogue_from_config(
        [
            {"name": "pro", "price": "19", "period": "30d", "traffic": "50G"},
            {"name": "payg", "kind": "tunnel_time", "price": "2.1"},
        ],
        [{"name": "100G", "price": "8", "traffic": "100G"}],
    )
    assert cat.lowest_byte_price(metered_rate(100)) == Rate(price=8_000, per=100 * GB)
    assert cat.lowest_byte_price(metered_rate(50)) == metered_rate(50)
