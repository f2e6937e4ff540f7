"""The bucket: exact, fair, never more forwarded than granted (playbooks and properties)."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from quota.core.bucket import Bucket, BucketState, Meter
from quota.core.errors import InvalidValue


class Pump:
    """What a relay pump does with a meter, without sockets: forward, hold, flush."""

    def __init__(self, bucket: Bucket) -> None:
        self.meter = bucket.attach(self)
        self.held = 0
        self.forwarded = 0

    def send(self, n: int) -> tuple[Meter, ...]:
        m = self.meter
        if not self.held and n <= m.allowance:
            m.allowance -= n
            m.passed += n
            self.forwarded += n
            return ()
        take = m.bucket.take(m, n)
        self.forwarded += take.passed
        self.held += n - take.passed
        return take.wakes

    def flush(self) -> None:
        k = self.meter.flush(self.held)
        self.forwarded += k
        self.held -= k


def flush_all(wakes: tuple[Meter, ...]) -> None:
    for meter in wakes:
        owner = meter.owner
        assert isinstance(owner, Pump)
        owner.flush()


def test_take_splits_a_chunk_at_the_grant() -> None:
    """A chunk larger than what remains passes exactly the remainder; the rest waits."""
    bucket = Bucket("a")
    bucket.grant(1000)
    pump = Pump(bucket)
    pump.send(600)
    pump.send(600)
    assert (pump.forwarded, pump.held, bucket.used, bucket.remaining) == (1000, 200, 1000, 0)
    assert bucket.state is BucketState.DEPLETED
    flush_all(bucket.grant(150))
    assert (pump.forwarded, pump.held, bucket.state) == (1150, 50, BucketState.DEPLETED)
    flush_all(bucket.grant(50))
    assert (pump.forwarded, pump.held, bucket.state) == (1200, 0, BucketState.DEPLETED)
    flush_all(bucket.grant(1))
    assert bucket.state is BucketState.ACTIVE


def test_grant_wakes_waiters_in_order_not_one_greedy_stream() -> None:
    """One grant shared by 8 paused streams serves them first-come first-served."""
    bucket = Bucket("a")
    pumps = [Pump(bucket) for _ in range(8)]
    for p in pumps:
        p.send(100)
    assert bucket.waiting == 8
    woken = bucket.grant(350)
    assert [m.owner for m in woken] == pumps[:4]
    flush_all(woken)
    assert [p.forwarded for p in pumps] == [100, 100, 100, 50, 0, 0, 0, 0]
    # a stream that was not waiting gets nothing while others wait
    late = Pump(bucket)
    late.send(10)
    assert late.forwarded == 0
    flush_all(bucket.grant(460))
    assert [p.forwarded for p in [*pumps, late]] == [100] * 8 + [10]


def test_idle_allowance_is_taken_back_before_a_stream_waits() -> None:
    """Headroom parked on an idle stream is reclaimed rather than pausing a busy one."""
    bucket = Bucket("a", slice_bytes=10_000)
    bucket.grant(10_000)
    idle, busy = Pump(bucket), Pump(bucket)
    idle.send(1)
    assert idle.meter.allowance > 0
    busy.send(9_999)
    assert (busy.forwarded, busy.held, bucket.remaining) == (9_999, 0, 0)


def test_inactive_passes_nothing_and_reactivation_resumes() -> None:
    """An inactive agent's meters pass nothing, even with bytes granted; activation wakes them."""
    bucket = Bucket("a")
    bucket.grant(1000)
    pump = Pump(bucket)
    pump.send(10)
    assert bucket.set_inactive(True) == ()
    pump.send(100)
    assert (pump.forwarded, bucket.state) == (10, BucketState.INACTIVE)
    flush_all(bucket.set_inactive(False))
    assert (pump.forwarded, pump.held) == (110, 0)


def test_low_water_signal() -> None:
    """wants_grant turns on below the low-water mark and while anyone waits."""
    bucket = Bucket("a", low_water=500)
    assert bucket.wants_grant()
    bucket.grant(1000)
    assert not bucket.wants_grant()
    Pump(bucket).send(600)
    assert bucket.wants_grant()


class _CountingSet(dict[Meter, None]):
    """A bucket's meters (a dict used as an ordered set) that counts how often it is walked."""

    walks = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        _CountingSet.walks += 1
        return super().__iter__()


def test_low_water_check_walks_no_meter_while_free_bytes_cover_it() -> None:
    """The per-slice low-water check is O(1) while unhanded bytes stay above low water."""
    bucket = Bucket("a", low_water=1000, slice_bytes=100)
    bucket._meters = _CountingSet()
    pumps = [Pump(bucket) for _ in range(1000)]
    bucket.grant(10**9)
    for p in pumps:
        p.send(150)  # past its slice: the slow path
    _CountingSet.walks = 0
    assert not bucket.wants_grant()
    assert _CountingSet.walks == 0


def test_detach_returns_allowance_and_wakes() -> None:
    """Closing a stream gives its unused headroom to the next waiter."""
    bucket = Bucket("a", slice_bytes=100)
    bucket.grant(1000)
    a = Pump(bucket)
    a.send(10)
    parked = a.meter.allowance
    assert parked > 0
    b = Pump(bucket)
    b.send(1000 - 10 - parked)
    c = Pump(bucket)
    c.send(parked + 5)
    assert c.forwarded == parked
    assert bucket.used == bucket.passed_total == 1000


@pytest.mark.parametrize("bad", [0, -1])
def test_take_rejects_non_positive(bad: int) -> None:
    """take() with no bytes is a caller bug."""
    bucket = Bucket("a")
    with pytest.raises(InvalidValue):
        bucket.take(bucket.attach(None), bad)


def test_negative_grant_rejected_and_nothing_changes() -> None:
    """A negative grant raises and leaves the bucket as it was."""
    bucket = Bucket("a")
    bucket.grant(5)
    with pytest.raises(InvalidValue):
        bucket.grant(-1)
    assert bucket.granted == 5


class BucketMachine(RuleBasedStateMachine):
    """Random sends, grants, closes and (in)activations keep every invariant."""

    pumps = Bundle("pumps")

    @initialize(slice_bytes=st.integers(1, 5000), low=st.integers(0, 5000))
    def setup(self, slice_bytes: int, low: int) -> None:
        self.bucket = Bucket("agent", low_water=low, slice_bytes=slice_bytes)
        self.granted = 0
        self.live: list[Pump] = []
        self.closed_forwarded = 0
        self.order: list[Meter] = []

    @rule(target=pumps)
    def open_stream(self) -> Pump:
        pump = Pump(self.bucket)
        self.live.append(pump)
        return pump

    @rule(pump=pumps, n=st.integers(1, 20_000))
    def send(self, pump: Pump, n: int) -> None:
        if pump not in self.live:
            return
        was_waiting = pump.meter.waiting
        flush_all(pump.send(n))
        if pump.meter.waiting and not was_waiting:
            self.order.append(pump.meter)

    @rule(n=st.integers(0, 30_000))
    def grant(self, n: int) -> None:
        self.granted += n
        woken = self.bucket.grant(n)
        queue = [m for m in self.order if m.waiting or m in woken]
        assert list(woken) == queue[: len(woken)], "grant must wake waiters in order"
        flush_all(woken)
        self.order = [m for m in self.order if m.waiting]

    @rule(pump=consumes(pumps))
    def close(self, pump: Pump) -> None:
        if pump not in self.live:
            return
        self.live.remove(pump)
        self.closed_forwarded += pump.forwarded
        flush_all(self.bucket.detach(pump.meter))
        self.order = [m for m in self.order if m.waiting]

    @rule(inactive=st.booleans())
    def set_inactive(self, inactive: bool) -> None:
        flush_all(self.bucket.set_inactive(inactive))
        self.order = [m for m in self.order if m.waiting]

    @invariant()
    def exact(self) -> None:
        forwarded = self.closed_forwarded + sum(p.forwarded for p in self.live)
        b = self.bucket
        assert forwarded == b.used == b.passed_total
        assert 0 <= b.used <= b.charged <= b.granted == self.granted
        assert b.remaining >= 0

    @invariant()
    def low_water_signal_as_defined(self) -> None:
        b = self.bucket
        assert b.wants_grant() == (not b.inactive and (b.remaining < b.low_water or b.waiting > 0))

    @invariant()
    def held_matches_need(self) -> None:
        for p in self.live:
            assert p.held == (p.meter.need if p.meter.waiting else 0)

    @invariant()
    def nothing_held_back_while_granted_bytes_remain(self) -> None:
        if self.bucket.waiting and not self.bucket.inactive:
            assert self.bucket.remaining == 0


TestBucketMachine = BucketMachine.TestCase
TestBucketMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_bytes_handed_to_a_waiter_survive_a_reclaim_before_it_flushes() -> None:
    """A stream that reads right after its wake cannot take back another waiter's bytes."""
    bucket = Bucket("a", slice_bytes=1)
    a, b = Pump(bucket), Pump(bucket)
    a.send(100)
    b.send(100)
    woken = bucket.grant(200)
    assert [m.owner for m in woken] == [a, b]
    a.flush()
    a.send(50)  # a resumes and reads before b has flushed: this reclaims idle headroom
    b.flush()
    assert (a.forwarded, b.forwarded, b.held, a.held) == (100, 100, 0, 50)
    assert bucket.used == 200


def test_a_refused_datagram_is_demand_until_the_next_grant() -> None:
    """UDP cannot wait: a refused datagram makes the bucket short and ask for a grant
    (capped at a slice however many were refused); a grant clears it."""
    bucket = Bucket("a", slice_bytes=1000)
    meter = bucket.attach("flow")
    assert (bucket.short, bucket.wants_grant()) == (0, False)
    assert not bucket.take_whole(meter, 600)
    assert (bucket.short, bucket.wants_grant()) == (600, True)
    for _ in range(5):
        bucket.take_whole(meter, 600)
    assert bucket.short == 1000  # a flood asks the usual lease, not one of its own size
    bucket.grant(5000)
    assert (bucket.short, bucket.wants_grant()) == (0, False)
    assert bucket.take_whole(meter, 600) and bucket.used == 600
