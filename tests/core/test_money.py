"""Millicoin arithmetic: exact parsing, and charges whose remainders are carried, never lost."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota.core.errors import InvalidValue
from quota.core.money import (
    GB,
    Rate,
    charge_with_carry,
    check_daily_exact,
    format_coin,
    metered_rate,
    monthly_price,
    parse_coin,
    prorate_credit,
    tunnel_time_rate,
    units_affordable,
)


@pytest.mark.parametrize(
    ("text", "millicoins"),
    [("19", 19_000), ("0.1", 100), ("0.125", 125), ("2.10", 2_100), (50, 50_000), ("0", 0)],
)
def test_parse_coin_is_exact(text: str | int, millicoins: int) -> None:
    """Coin strings and whole-coin ints become exact millicoins."""
    assert parse_coin(text) == millicoins


@pytest.mark.parametrize("bad", ["0.1234", "-1", "1e3", "", "1,5", 1.5, True, "9" * 30])
def test_parse_coin_refuses_floats_and_excess_precision(bad: object) -> None:
    """Floats, bools, a fourth decimal, signs and huge amounts are refused."""
    with pytest.raises(InvalidValue):
        parse_coin(bad)  # type: ignore[arg-type]


@given(st.integers(0, 2**62))
def test_format_and_parse_round_trip(millicoins: int) -> None:
    """format_coin renders 3 decimals that parse back to the same amount."""
    assert parse_coin(format_coin(millicoins)) == millicoins


def test_a_thousand_1mb_charges_equal_one_1gb_charge() -> None:
    """1000 x 1 MB at 0.1 coin/GB cost exactly what 1 GB costs: 100 millicoins."""
    rate = metered_rate(100)
    carry, total = 0, 0
    for _ in range(1000):
        charge = charge_with_carry(10**6, rate, carry)
        total, carry = total + charge.amount, charge.carry
    assert (total, carry) == (100, 0)
    assert charge_with_carry(GB, rate, 0).amount == 100


@given(
    parts=st.lists(st.integers(0, 10**12), max_size=50),
    price=st.integers(0, 10**6),
    per=st.integers(1, 10**10),
)
def test_split_charges_plus_carry_equal_the_whole(parts: list[int], price: int, per: int) -> None:
    """For any split, the sum of the charges and the final carry equal one charge of the sum."""
    rate = Rate(price=price, per=per)
    carry, total = 0, 0
    for part in parts:
        charge = charge_with_carry(part, rate, carry)
        assert 0 <= charge.carry < per
        total, carry = total + charge.amount, charge.carry
    whole = charge_with_carry(sum(parts), rate, 0)
    assert (total, carry) == (whole.amount, whole.carry)


@given(carry=st.integers(0, 30 * 86_400 - 1), days=st.integers(1, 400))
def test_every_full_day_of_tunnel_time_costs_the_same(carry: int, days: int) -> None:
    """With a price divisible by 30, each day costs price/30 whatever carry precedes it."""
    rate = tunnel_time_rate(2_100)
    for _ in range(days):
        charge = charge_with_carry(86_400, rate, carry)
        assert charge.amount == 70
        carry = charge.carry


def test_thirty_days_of_one_tunnel_cost_the_monthly_price() -> None:
    """30 days of one tunnel cost exactly the monthly price; 2 x 15 days too."""
    rate = tunnel_time_rate(2_100)
    assert charge_with_carry(30 * 86_400, rate, 0).amount == 2_100
    first = charge_with_carry(15 * 86_400, rate, 0)
    assert first.amount + charge_with_carry(15 * 86_400, rate, first.carry).amount == 2_100


def test_monthly_tunnel_prices_must_make_whole_days() -> None:
    """A monthly price not divisible by 30 millicoins is refused with the reason."""
    check_daily_exact(2_100)
    with pytest.raises(InvalidValue, match=r"multiple of 0\.030"):
        check_daily_exact(2_000)


@given(
    balance=st.integers(0, 10**9),
    price=st.integers(1, 10**4),
    per=st.integers(1, 10**9),
    carry_seed=st.integers(0, 10**9),
)
def test_units_affordable_is_the_largest_payable_quantity(
    balance: int, price: int, per: int, carry_seed: int
) -> None:
    """charge(q) fits the balance and charge(q + 1) does not."""
    rate = Rate(price=price, per=per)
    carry = carry_seed % per
    q = units_affordable(balance, rate, carry)
    assert charge_with_carry(q, rate, carry).amount <= balance
    assert charge_with_carry(q + 1, rate, carry).amount > balance


@given(price=st.integers(0, 10**7), period=st.integers(1, 10**10), left=st.integers(-10, 10**11))
def test_proration_credit_is_bounded_by_the_price(price: int, period: int, left: int) -> None:
    """The credit for unused time is between 0 and the price paid."""
    assert 0 <= prorate_credit(price, period, left) <= price


def test_monthly_price_normalises_periods() -> None:
    """A 60-day plan at 30 coin costs 15 coin a month."""
    assert monthly_price(30_000, 60 * 86_400_000) == 15_000
