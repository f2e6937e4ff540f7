"""Billing rules: catalogue from config, draw order, auto top-up, renewals, notices."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota.core.billing import (
    Package,
    PlanKind,
    RenewalAction,
    TopupOutcome,
    catalogue_from_config,
    decide_renewal,
    decide_topup,
    draw_traffic,
    low_balance_due,
)
from quota.core.errors import InvalidValue
from quota.core.money import metered_rate

DAY = 86_400_000


def test_catalogue_parses_plans_and_packages() -> None:
    """Plans and packages from config tables become exact integers."""
    cat = catalogue_from_config(
        [
            {"name": "pro", "price": "19", "period": "30d", "traffic": "10G"},
            {"name": "payg", "kind": "tunnel_time", "price": "2.1"},
        ],
        [{"name": "1G", "price": "0.5", "traffic": "1G"}],
    )
    assert (cat.plan("pro").price, cat.plan("pro").period_ms, cat.plan("pro").traffic) == (
        19_000,
        30 * DAY,
        10**9 * 10,
    )
    assert cat.plan("payg").kind is PlanKind.TUNNEL_TIME and cat.plan("payg").monthly == 2_100
    assert cat.package("1G").price == 500


@pytest.mark.parametrize(
    ("plans", "packages", "key"),
    [
        ([{"name": "x", "price": 1.5, "period": "30d"}], [], "plans[0].price"),
        ([{"name": "x", "price": "1", "period": "soon"}], [], "plans[0].period"),
        ([{"name": "x", "price": "1"}], [], "plans[0].period"),
        ([{"name": "x", "kind": "tunnel_time", "price": "2"}], [], "plans[0].price"),
        ([{"name": "x", "price": "1", "period": "1d", "colour": "red"}], [], "plans[0]"),
        ([], [{"name": "p", "price": "1", "traffic": "0"}], "packages[0].traffic"),
        ([], [{"name": "p", "price": "1", "traffic": "1G"}] * 2, "packages[1].name"),
        ({}, [], "plans"),
    ],
)
def test_catalogue_errors_name_the_key(plans: object, packages: object, key: str) -> None:
    """Each bad plan or package is refused with the config key in the message."""
    with pytest.raises(InvalidValue) as info:
        catalogue_from_config(plans, packages)
    assert str(info.value).startswith(key)


@given(
    need=st.integers(0, 10**12),
    bucket=st.integers(0, 10**12),
    packages=st.integers(0, 10**12),
    metered=st.booleans(),
    balance=st.integers(0, 10**6),
    carry=st.integers(0, 10**9 - 1),
)
def test_draw_splits_need_in_order_and_never_overdraws(
    need: int, bucket: int, packages: int, metered: bool, balance: int, carry: int
) -> None:
    """Bucket first, packages next, metered last; parts add up; cost never exceeds balance."""
    d = draw_traffic(
        need=need,
        bucket=bucket,
        packages=packages,
        metered=metered,
        balance=balance,
        rate=metered_rate(100),
        carry=carry,
    )
    assert d.from_bucket + d.from_packages + d.metered_bytes + d.unbilled == need
    assert d.from_packages == 0 or d.from_bucket == bucket
    assert d.metered_bytes == 0 or d.from_packages == packages
    assert 0 <= d.cost <= balance and (metered or d.metered_bytes == 0)


PKG = Package(name="1G", price=500, traffic=10**9)


@given(
    remaining=st.integers(0, 10**10),
    need=st.integers(0, 10**10),
    low=st.integers(0, 10**10),
    limit=st.integers(0, 10**5),
    spent=st.integers(0, 10**5),
    balance=st.integers(0, 10**5),
)
def test_topup_buys_the_fewest_packages_within_limit_and_balance(
    remaining: int, need: int, low: int, limit: int, spent: int, balance: int
) -> None:
    """Never more packages than the shortfall needs, never past the limit or the balance."""
    t = decide_topup(
        remaining=remaining,
        need=need,
        low_water=low,
        package=PKG,
        limit=limit,
        spent=spent,
        balance=balance,
        blocked=False,
    )
    shortfall = need + low - remaining
    if shortfall <= 0:
        assert t.outcome is TopupOutcome.NOT_NEEDED
        return
    assert (t.count - 1) * PKG.traffic < shortfall
    assert spent + t.count * PKG.price <= max(limit, spent)
    assert t.count * PKG.price <= balance
    assert (t.outcome is TopupOutcome.BUY) == (t.count > 0)


def test_blocked_topup_is_not_retried() -> None:
    """A top-up blocked by an unpaid attempt stays blocked (waits for a deposit)."""
    t = decide_topup(
        remaining=0,
        need=10,
        low_water=0,
        package=PKG,
        limit=10_000,
        spent=0,
        balance=10_000,
        blocked=True,
    )
    assert t.outcome is TopupOutcome.BLOCKED
    short = decide_topup(
        remaining=0,
        need=10,
        low_water=0,
        package=PKG,
        limit=10_000,
        spent=0,
        balance=499,
        blocked=False,
    )
    assert short.outcome is TopupOutcome.BALANCE_SHORT


@pytest.mark.parametrize(
    ("until", "auto", "balance", "action"),
    [
        (10, True, 0, RenewalAction.NONE),
        (5, False, 100, RenewalAction.EXPIRE),
        (5, True, 19, RenewalAction.RENEW),
        (5, True, 18, RenewalAction.LAPSE),
    ],
)
def test_renewal_decisions(until: int, auto: bool, balance: int, action: RenewalAction) -> None:
    """Running, expiring, renewing and lapsing subscriptions at now=5, price 19."""
    assert (
        decide_renewal(active_until=until, now=5, auto_renew=auto, balance=balance, price=19)
        is action
    )


def test_low_balance_notice_below_twice_monthly_at_most_weekly() -> None:
    """Below 2x the monthly total, and not again within the interval."""
    week = 7 * DAY
    assert low_balance_due(
        balance=12, monthly_total=19, last_notice_at=None, now=0, interval_ms=week
    )
    assert not low_balance_due(
        balance=38, monthly_total=19, last_notice_at=None, now=0, interval_ms=week
    )
    assert not low_balance_due(
        balance=1, monthly_total=19, last_notice_at=0, now=week - 1, interval_ms=week
    )
    assert low_balance_due(
        balance=1, monthly_total=19, last_notice_at=0, now=week, interval_ms=week
    )
    assert not low_balance_due(
        balance=0, monthly_total=0, last_notice_at=None, now=0, interval_ms=week
    )
