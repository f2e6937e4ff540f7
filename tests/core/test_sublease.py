"""Sub-leases: one relay's grant shared out to its workers never lets a byte pass beyond it."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quota.core.bucket import Bucket, Meter
from quota.core.errors import InvalidValue
from quota.core.sublease import Served, SubLeases, want_size


def test_want_is_cut_to_the_pool_and_waits_for_the_rest() -> None:
    """A want beyond the pool gets the pool; the rest waits and is served by the next grant."""
    leases = SubLeases("a")
    leases.add(100)
    served = leases.want(1, 150)
    assert [g.nbytes for g in served.grants] == [100] and leases.pool == 0
    assert leases.short == 50
    assert [g.nbytes for g in leases.add(80).grants] == [50]
    assert leases.pool == 30 and leases.short == 0
    leases.check()


def test_short_want_recalls_idle_bytes_of_other_workers() -> None:
    """A worker left waiting makes the quota host ask the others to give their unused bytes back."""
    leases = SubLeases("a")
    leases.add(100)
    leases.want(1, 100)
    assert leases.want(3, 10) == Served()  # headroom only: nobody is asked to give back
    served = leases.want(2, 10, need=10)
    assert served == Served(recalls=(1,))
    assert (leases.short, leases.need) == (20, 10)  # of what waits, streams need 10
    back = leases.give_back(1, 60)
    assert [(g.worker, g.nbytes) for g in back.grants] == [(2, 10), (3, 10)]  # streams first
    assert leases.pool == 40
    leases.check()


def test_a_revoke_on_give_back_comes_before_any_waiting_want() -> None:
    """Bytes given back while an operator's revoke is owed are taken back, not handed on."""
    leases = SubLeases("a")
    leases.add(100)
    leases.want(1, 100)
    leases.want(2, 50, need=50)
    served = leases.give_back(1, 80, revoke=60)
    assert [(g.worker, g.nbytes) for g in served.grants] == [(2, 20)]
    assert leases.revoked == 60 and leases.pool == 0
    leases.check()


def test_a_lost_worker_writes_off_what_it_held() -> None:
    """Bytes a dead worker held are never handed out again; its reported use stays counted."""
    leases = SubLeases("a")
    leases.add(100)
    leases.want(1, 70)
    leases.report(1, 20)
    leases.worker_lost(1)
    assert leases.lost == 50 and leases.used == 20 and leases.pool == 30
    assert leases.want(2, 100).grants[0].nbytes == 30
    leases.check()


def test_bad_reports_are_refused() -> None:
    """Use beyond a sub-lease, use going back, or returning more than held are errors."""
    leases = SubLeases("a")
    leases.add(10)
    leases.want(1, 10)
    with pytest.raises(InvalidValue):
        leases.report(1, 11)
    leases.report(1, 5)
    with pytest.raises(InvalidValue):
        leases.report(1, 4)
    with pytest.raises(InvalidValue):
        leases.give_back(1, 6)
    with pytest.raises(InvalidValue):
        leases.want(1, -1)
    assert leases.revoke(5) == 0  # the pool is empty: nothing to revoke


def test_want_size_only_below_low_water() -> None:
    """A worker asks nothing above low water, else what waits plus headroom up to a chunk."""
    assert want_size(short=0, remaining=100, low_water=50, chunk=200) == 0
    assert want_size(short=0, remaining=10, low_water=50, chunk=200) == 190
    assert want_size(short=30, remaining=0, low_water=50, chunk=200) == 230
    assert want_size(short=30, remaining=500, low_water=50, chunk=200) == 30


# -- a simulated relay: a quota host, workers with real buckets, streams passing bytes -----


@dataclass
class Worker:
    bucket: Bucket
    meters: list[Meter] = field(default_factory=list)


@dataclass
class Sim:
    leases: SubLeases = field(default_factory=lambda: SubLeases("a"))
    workers: dict[int, Worker] = field(default_factory=dict)
    passed_dead: int = 0
    incarnation: int = 0

    def start(self, slot: int) -> None:
        self.incarnation += 1
        bucket = Bucket("a", low_water=64, slice_bytes=128)
        self.workers[slot] = Worker(bucket, [bucket.attach(object()) for _ in range(3)])

    def apply(self, served: Served) -> None:
        for grant in served.grants:
            for meter in self.workers[grant.worker].bucket.grant(grant.nbytes):
                meter.flush(meter.owed)  # a woken stream sends the chunk it held
        for slot in served.recalls:
            bucket = self.workers[slot].bucket
            back = bucket.revoke(bucket.remaining)
            self.report(slot)
            self.apply(self.leases.give_back(slot, back))

    def report(self, slot: int) -> None:
        self.leases.report(slot, self.workers[slot].bucket.used)

    def passed(self) -> int:
        live = sum(m.passed for w in self.workers.values() for m in w.meters)
        return self.passed_dead + live


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 2000)),
        st.tuples(st.just("revoke"), st.integers(0, 2000)),
        st.tuples(st.just("take"), st.integers(0, 2), st.integers(0, 2), st.integers(1, 900)),
        st.tuples(st.just("low"), st.integers(0, 2)),
        st.tuples(st.just("report"), st.integers(0, 2)),
        st.tuples(st.just("kill"), st.integers(0, 2)),
    ),
    max_size=80,
)


def _step(sim: Sim, op: tuple[object, ...]) -> None:
    kind, *args = op
    if kind == "add":
        sim.apply(sim.leases.add(int(args[0])))  # type: ignore[call-overload]
    elif kind == "revoke":
        sim.leases.revoke(int(args[0]))  # type: ignore[call-overload]
    elif kind == "take":
        slot, which, n = (int(a) for a in args)  # type: ignore[call-overload]
        worker = sim.workers[slot]
        for meter in worker.bucket.take(worker.meters[which], n).wakes:
            meter.flush(meter.owed)
        _low(sim, slot)
    elif kind == "low":
        _low(sim, int(args[0]))  # type: ignore[call-overload]
    elif kind == "report":
        sim.report(int(args[0]))  # type: ignore[call-overload]
    else:
        slot = int(args[0])  # type: ignore[call-overload]
        sim.passed_dead += sum(m.passed for m in sim.workers[slot].meters)
        sim.apply(sim.leases.worker_lost(slot))
        sim.start(slot)


def _low(sim: Sim, slot: int) -> None:
    bucket = sim.workers[slot].bucket
    n = want_size(short=bucket.short, remaining=bucket.remaining, low_water=64, chunk=256)
    sim.report(slot)
    sim.apply(sim.leases.want(slot, n, need=bucket.short))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_streams_over_every_worker_never_pass_more_than_the_relay_was_granted(
    ops: list[tuple[object, ...]],
) -> None:
    """Whatever the order of grants, takes, recalls and deaths: passed <= added - revoked."""
    sim = Sim()
    for slot in range(3):
        sim.start(slot)
    for op in ops:
        _step(sim, op)
        sim.leases.check()
        assert sim.passed() <= sim.leases.added - sim.leases.revoked
        assert sim.leases.pool >= 0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 500)), min_size=1, max_size=30))
def test_a_grant_reaches_the_worker_whose_streams_wait(takes: list[tuple[int, int]]) -> None:
    """Idle bytes in one worker never keep another's streams waiting once the relay holds enough."""
    sim = Sim()
    for slot in range(3):
        sim.start(slot)
    total = sum(n for _, n in takes)
    sim.apply(sim.leases.add(total))
    for slot in range(3):
        _low(sim, slot)  # every worker takes headroom first
    for slot, n in takes:
        worker = sim.workers[slot]
        for meter in worker.bucket.take(worker.meters[0], n).wakes:
            meter.flush(meter.owed)
        _low(sim, slot)
    assert all(w.bucket.waiting == 0 for w in sim.workers.values())
    assert sim.passed() == total
