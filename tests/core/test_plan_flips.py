"""No sequence of subscribes, plan changes, packages and traffic buys a byte below the catalogue.

A small pure model of one agent's billing, built only from quota.core functions and
the example catalogue (examples/billing.toml), checks after every step that the coin
spent covers the bytes received at the catalogue's lowest price per byte. The same
model with the old refund (`prorate_credit`, unused time only) loses that property:
the plan flip of issue 9 (starter -> pro, relay 50 GB, back to starter) is replayed.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from quota.core.billing import Plan, PlanKind, PriceList, catalogue_from_config, draw_traffic
from quota.core.money import (
    GB,
    Rate,
    metered_rate,
    parse_coin,
    plan_change_credit,
    prorate_credit,
)

CONFIG = tomllib.loads(
    (Path(__file__).resolve().parents[2] / "examples" / "billing.toml").read_text()
)
CATALOGUE: PriceList = catalogue_from_config(CONFIG["plans"], CONFIG["packages"])
METERED: Rate = metered_rate(parse_coin(CONFIG["pricing"]["metered_price_per_gb"]))
LOWEST: Rate = CATALOGUE.lowest_byte_price(METERED)
PERIODIC = sorted(n for n, p in CATALOGUE.plans.items() if p.kind is PlanKind.PERIODIC)
HOUR = 3_600_000
# integers() favours small values: name the sizes and waits that matter to a plan too
SIZES = [10**6, GB, 5 * GB, 10 * GB, 50 * GB, 100 * GB, 600 * GB]
WAITS = [0, 60_000, HOUR, 24 * HOUR, 10 * 24 * HOUR, 31 * 24 * HOUR, 400 * 24 * HOUR]

Refund = Callable[[Plan, int, int], int]  # (old plan, remaining ms, included bytes left)


def new_refund(plan: Plan, remaining_ms: int, left: int) -> int:
    return plan_change_credit(
        price=plan.price,
        period_ms=plan.period_ms,
        remaining_ms=remaining_ms,
        included=plan.traffic,
        included_left=left,
        byte_price=LOWEST,
    )


def old_refund(plan: Plan, remaining_ms: int, left: int) -> int:
    return prorate_credit(plan.price, plan.period_ms, remaining_ms)


class Account:
    """One agent on a periodic plan, billed as quota/billing/charging.py bills it."""

    def __init__(self, refund: Refund) -> None:
        self.refund = refund
        self.now = 0
        self.plan: Plan | None = None
        self.until = 0
        self.bucket = 0
        self.packages = 0
        self.carry = 0
        self.spent = 0  # millicoins out of the balance, net of credits
        self.received = 0  # bytes relayed and drawn from bucket, packages or metering

    def start_period(self, plan: Plan) -> None:
        self.plan, self.until = plan, self.now + plan.period_ms
        self.spent += plan.price
        self.bucket = plan.traffic  # an unused bucket of the period before is dropped

    def change(self, plan: Plan) -> None:
        assert self.plan is not None
        self.spent -= self.refund(self.plan, self.until - self.now, self.bucket)
        self.start_period(plan)

    def relay(self, need: int) -> None:
        draw = draw_traffic(
            need=need,
            bucket=self.bucket,
            packages=self.packages,
            metered=True,
            balance=10**15,
            rate=METERED,
            carry=self.carry,
        )
        self.bucket -= draw.from_bucket
        self.packages -= draw.from_packages
        self.carry = draw.carry
        self.spent += draw.cost
        self.received += draw.from_bucket + draw.from_packages + draw.metered_bytes

    def wait(self, ms: int) -> None:
        self.now += ms
        while self.plan is not None and self.now >= self.until:
            self.until += self.plan.period_ms  # auto-renew: one period at a time
            self.spent += self.plan.price
            self.bucket = self.plan.traffic

    def pays_for_every_byte(self) -> bool:
        return self.spent >= self.received * LOWEST.price // LOWEST.per


class PlanFlips(RuleBasedStateMachine):
    refund: Refund = staticmethod(new_refund)

    def __init__(self) -> None:
        super().__init__()
        self.account = Account(type(self).refund)

    @precondition(lambda self: self.account.plan is None)
    @rule(name=st.sampled_from(PERIODIC))
    def subscribe(self, name: str) -> None:
        self.account.start_period(CATALOGUE.plan(name))

    @precondition(lambda self: self.account.plan is not None)
    @rule(name=st.sampled_from(PERIODIC))
    def change_plan(self, name: str) -> None:
        assert self.account.plan is not None
        if name != self.account.plan.name:
            self.account.change(CATALOGUE.plan(name))

    @rule(name=st.sampled_from(sorted(CATALOGUE.packages)), count=st.integers(1, 3))
    def buy_packages(self, name: str, count: int) -> None:
        package = CATALOGUE.package(name)
        self.account.spent += package.price * count
        self.account.packages += package.traffic * count

    @rule(need=st.sampled_from(SIZES) | st.integers(0, 700 * GB))
    def relay(self, need: int) -> None:
        self.account.relay(need)

    @rule(ms=st.sampled_from(WAITS) | st.integers(0, 400 * 24 * HOUR))
    def wait(self, ms: int) -> None:
        self.account.wait(ms)

    @invariant()
    def no_byte_below_the_lowest_price(self) -> None:
        assert self.account.pays_for_every_byte(), (self.account.spent, self.account.received)


class OldRefundPlanFlips(PlanFlips):
    refund: Refund = staticmethod(old_refund)


TestPlanFlips = PlanFlips.TestCase
TestPlanFlips.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)


def flip_five_times(account: Account) -> None:
    """The issue's attack: starter -> pro, relay 50 GB, back to starter, five times."""
    account.start_period(CATALOGUE.plan("starter"))
    for _ in range(5):
        account.wait(60_000)
        account.change(CATALOGUE.plan("pro"))
        account.relay(50 * GB)
        account.wait(60_000)
        account.change(CATALOGUE.plan("starter"))


def test_the_catalogue_lowest_price_is_the_100g_package() -> None:
    """The example catalogue sells its cheapest bytes at 8 coin per 100 GB."""
    assert Rate(price=8_000, per=100 * GB) == LOWEST


def test_plan_flipping_leaked_with_the_time_only_refund() -> None:
    """With prorate_credit, 250 GB cost about 5 coin: below 20 coin at the lowest price."""
    account = Account(old_refund)
    flip_five_times(account)
    assert account.received == 250 * GB
    assert account.spent < 5_100 and not account.pays_for_every_byte()


def test_plan_flipping_pays_for_the_traffic_with_the_new_refund() -> None:
    """With plan_change_credit the same flips cost at least 250 GB at 0.08 coin/GB."""
    account = Account(new_refund)
    flip_five_times(account)
    assert account.received == 250 * GB
    assert account.spent >= 20_000 and account.pays_for_every_byte()


def test_the_rule_based_search_finds_the_leak_of_the_old_refund() -> None:
    """The same state machine over the old refund fails its invariant (found, not shrunk)."""
    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            OldRefundPlanFlips,
            settings=settings(
                max_examples=1000,  # stops at the first failure, usually found within 200
                stateful_step_count=30,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.generate],  # finding one failure is the point; no shrinking
                print_blob=False,
            ),
        )
