"""The lease rule: grants across relays never promise more than an agent can pay for."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quota.core.billing import draw_traffic
from quota.core.errors import InvalidValue
from quota.core.lease import (
    LeaseTotals,
    after_report,
    capacity,
    grant_size,
    metered_reserve,
    shortfall,
)
from quota.core.money import GB, Rate, metered_rate

RATE = metered_rate(100)  # 0.1 coin per GB
TTL = 600_000


def test_outstanding_counts_only_while_valid() -> None:
    """A lease promises granted - used - returned (never below 0) until valid_until."""
    lease = LeaseTotals(granted_total=100, used_total=30, returned_total=20, valid_until=10)
    assert lease.outstanding(9) == 50 and lease.outstanding(10) == 0
    assert LeaseTotals(granted_total=5, used_total=9, valid_until=10).outstanding(0) == 0


def test_expire_writes_off_the_remainder_once() -> None:
    """An expired lease's remainder becomes returned; a valid one is untouched."""
    lease = LeaseTotals(granted_total=100, used_total=30, valid_until=10)
    assert lease.expire(5) == lease
    gone = lease.expire(10)
    assert gone.returned_total == 70 and gone.expire(10) == gone
    assert gone.extend(20).outstanding(15) == 0


def test_capacity_and_grant_size() -> None:
    """Capacity is traffic plus what the free balance buys when metered; grants cut to it."""
    assert capacity(traffic=5, metered=False, balance=10**6, rate=RATE, carry=0) == 5
    # charges round down, so 0.1 coin buys 1 GB and almost 0.01 GB more
    assert (
        capacity(traffic=5, metered=True, balance=100, rate=RATE, carry=0)
        == 5 + 101 * GB // 100 - 1
    )
    free_rounding = GB // 100 - 1  # bytes whose charge rounds down to 0 millicoins
    assert capacity(traffic=5, metered=True, balance=100, rate=RATE, carry=0, reserved=100) == (
        5 + free_rounding
    )
    assert grant_size(want=10, capacity=25, outstanding=20) == 5
    assert grant_size(want=10, capacity=25, outstanding=30) == 0
    assert shortfall(want=10, capacity=25, outstanding=20) == 5
    assert metered_reserve(1, RATE) == 1 and metered_reserve(GB, RATE) == 100
    assert metered_reserve(-5, RATE) == 0
    with pytest.raises(InvalidValue):
        grant_size(want=-1, capacity=5, outstanding=0)
    with pytest.raises(InvalidValue):
        LeaseTotals(granted_total=-1)


@dataclass
class _Agent:
    traffic: int
    metered: bool
    carry: int = 0
    leases: dict[int, LeaseTotals] = field(default_factory=dict)

    def outstanding(self, now: int) -> int:
        return sum(lease.outstanding(now) for lease in self.leases.values())


@dataclass
class _World:
    """Two agents of one account sharing a balance, leased out to three relays."""

    balance: int
    agents: list[_Agent]
    rate: Rate
    now: int = 0

    def capacity(self, index: int) -> int:
        agent = self.agents[index]
        reserved = sum(
            metered_reserve(other.outstanding(self.now) - other.traffic, self.rate)
            for i, other in enumerate(self.agents)
            if i != index
        )
        return capacity(
            traffic=agent.traffic,
            metered=agent.metered,
            balance=self.balance,
            rate=self.rate,
            carry=agent.carry,
            reserved=reserved,
        )

    def lease(self, index: int, relay: int) -> LeaseTotals:
        return self.agents[index].leases.get(relay, LeaseTotals(valid_until=self.now))

    def charge(self, index: int, nbytes: int) -> int:
        """Bill `nbytes` as the billing API does; return the unbilled bytes."""
        agent = self.agents[index]
        draw = draw_traffic(
            need=nbytes,
            bucket=agent.traffic,
            packages=0,
            metered=agent.metered,
            balance=self.balance,
            rate=self.rate,
            carry=agent.carry,
        )
        agent.traffic -= draw.from_bucket
        agent.carry = draw.carry
        self.balance -= draw.cost
        return draw.unbilled

    def sync(self, index: int, relay: int, used: int, returned: int, want: int) -> int:
        """One relay report for one agent: usage, returns, expiry, extension, grant."""
        lease = self.lease(index, relay)
        used = min(used, lease.outstanding(self.now))  # a relay spends only what it holds
        unbilled = self.charge(index, used)
        lease = lease.report(used=used, returned=min(returned, lease.remaining()))
        lease = lease.expire(self.now).extend(self.now + TTL)
        self.agents[index].leases[relay] = lease
        cap, held = self.capacity(index), self.agents[index].outstanding(self.now)
        self.agents[index].leases[relay] = lease.grant(
            grant_size(want=want, capacity=cap, outstanding=held)
        )
        return unbilled


_steps = st.lists(
    st.tuples(
        st.integers(0, 1),  # agent
        st.integers(0, 2),  # relay
        st.integers(0, 3 * GB),  # used
        st.integers(0, GB),  # returned
        st.integers(0, 4 * GB),  # want
        st.integers(0, TTL),  # time passing before the report
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(
    balance=st.integers(0, 1000),
    traffic=st.tuples(st.integers(0, 3 * GB), st.integers(0, 3 * GB)),
    metered=st.tuples(st.booleans(), st.booleans()),
    price=st.integers(0, 500),
    steps=_steps,
)
def test_leases_across_relays_never_exceed_what_the_account_can_pay(
    balance: int,
    traffic: tuple[int, int],
    metered: tuple[bool, bool],
    price: int,
    steps: list[tuple[int, int, int, int, int, int]],
) -> None:
    """After any reports, spending every outstanding lease bills every byte (none unbilled)."""
    world = _World(
        balance=balance,
        agents=[_Agent(traffic=t, metered=m) for t, m in zip(traffic, metered, strict=True)],
        rate=Rate(price=price, per=GB),
    )
    for agent, relay, used, returned, want, later in steps:
        world.now += later
        assert world.sync(agent, relay, used, returned, want) == 0
        _spend_everything(copy.deepcopy(world))
        _spend_everything(copy.deepcopy(world), reverse=True)


def _spend_everything(world: _World, reverse: bool = False) -> None:
    """Every relay spends all it holds, in either agent order: every byte is billed."""
    order = [1, 0] if reverse else [0, 1]
    for i in order:
        agent = world.agents[i]
        for relay in list(agent.leases):
            assert world.charge(i, agent.leases[relay].outstanding(world.now)) == 0
    assert world.balance >= 0


@given(
    want=st.integers(0, 10**12),
    cap=st.integers(0, 10**12),
    held=st.integers(0, 10**12),
)
def test_grant_never_raises_the_sum_above_capacity(want: int, cap: int, held: int) -> None:
    """A grant never lifts the sum above capacity; grant plus shortfall is exactly `want`."""
    grant = grant_size(want=want, capacity=cap, outstanding=held)
    assert 0 <= grant <= want
    assert held + grant <= max(held, cap)
    if held <= cap:
        assert grant + shortfall(want=want, capacity=cap, outstanding=held) == want


_TOTAL = st.integers(0, 2**40)


@given(g=_TOTAL, u=_TOTAL, r=_TOTAL, until=_TOTAL, used=_TOTAL, back=_TOTAL, now=_TOTAL, to=_TOTAL)
def test_after_report_is_report_expire_extend(
    g: int, u: int, r: int, until: int, used: int, back: int, now: int, to: int
) -> None:
    """The tuple form of a report's lease update equals the LeaseTotals chain it replaces."""
    chained = (
        LeaseTotals(granted_total=g, used_total=u, returned_total=r, valid_until=until)
        .report(used=used, returned=back)
        .expire(now)
        .extend(to)
    )
    fast = after_report((g, u, r, until), used=used, returned=back, now=now, valid_until=to)
    assert fast == (
        chained.granted_total,
        chained.used_total,
        chained.returned_total,
        chained.valid_until,
    )
