"""Leases follow traffic: playbooks of the relay's lease rules, and a property over a sync world."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from quota.core.bucket import Bucket, Meter
from quota.core.relay_sync import Holding, LeaseRules, asks, rate_per_s
from quota.core.sync import Applied, LeaseAsk, Report, SyncMachine, SyncSettings

MB = 1_000_000
RULES = LeaseRules(
    interval_ms=1000, floor=MB, ceiling=500 * MB, low_water=200_000, round_floor_ms=25
)


def test_no_stream_and_no_rate_asks_nothing_however_low_the_bucket() -> None:
    """A bucket at zero with a tunnel but no waiting stream and no traffic asks for no lease."""
    idle = Holding(remaining=0, short=0, streams=0, tunnels=True)
    assert RULES.want(idle, rate=0, round_ms=10) == 0
    open_idle = Holding(remaining=0, short=0, streams=3, tunnels=True)
    assert RULES.want(open_idle, rate=0, round_ms=10) == 0


def test_a_waiting_stream_asks_its_need_plus_the_floor() -> None:
    """With no rate measured, a waiting stream asks what it lacks plus the floor."""
    waiting = Holding(remaining=0, short=32_768, streams=1)
    assert RULES.want(waiting, rate=0, round_ms=10) == 32_768 + MB


def test_lease_size_follows_the_rate_within_floor_and_ceiling() -> None:
    """The target: one interval and two round trips of the rate, plus low water, within bounds."""
    assert RULES.target(rate=100 * MB, round_ms=50) == 110 * MB + 25 * MB
    assert RULES.target(rate=100 * MB, round_ms=1) == 105 * MB + 25 * MB  # trips of 25 ms at least
    assert RULES.target(rate=1000, round_ms=50) == MB  # the floor
    assert RULES.target(rate=10_000 * MB, round_ms=50) == 500 * MB  # the ceiling
    running = Holding(remaining=60 * MB, streams=1)
    assert RULES.want(running, rate=100 * MB, round_ms=50) == 75 * MB  # topped up to the target
    full = Holding(remaining=140 * MB, streams=1)
    assert RULES.want(full, rate=100 * MB, round_ms=50) == 0


def test_low_water_is_two_round_trips_of_the_rate_at_least_the_configured_mark() -> None:
    """Low water: two round trips of the rate (a quarter interval at least): no bucket runs dry."""
    assert RULES.low_water_at(rate=100 * MB, round_ms=50) == 25 * MB  # a quarter interval
    assert RULES.low_water_at(rate=100 * MB, round_ms=200) == 40 * MB  # two round trips
    assert RULES.low_water_at(rate=0, round_ms=50) == 200_000
    assert RULES.low_water_at(rate=10**6 * MB, round_ms=50) == 500 * MB


def test_before_any_rate_low_water_is_half_the_grant_and_round_trips_have_a_floor() -> None:
    """A first grant sets low water at three quarters; round trips count as 100 ms at least."""
    assert RULES.low_water_after(10 * MB) == 7_500_000
    assert RULES.low_water_after(100_000) == 200_000  # never below the configured mark
    assert LeaseRules(floor=MB).target(rate=100 * MB, round_ms=5) == 120 * MB + 25 * MB


def test_rate_is_integer_bytes_per_second() -> None:
    """Bytes over milliseconds, in whole bytes per second; nothing moved is no rate."""
    assert rate_per_s(5 * MB, 500) == 10 * MB
    assert rate_per_s(0, 0) == 0 and rate_per_s(7, 0) == 7000


def test_leases_go_back_without_tunnel_at_once_and_idle_after_idle_return() -> None:
    """No tunnel here: back now; a tunnel with no stream: back after idle_return; waiting: kept."""
    rules = LeaseRules(idle_return_ms=5000)
    assert rules.gives_back(Holding(remaining=10, tunnels=False), idle_ms=0)
    assert not rules.gives_back(Holding(remaining=10, tunnels=True), idle_ms=4999)
    assert rules.gives_back(Holding(remaining=10, tunnels=True), idle_ms=5000)
    assert not rules.gives_back(Holding(remaining=10, streams=1), idle_ms=10**9)
    assert not rules.gives_back(Holding(remaining=0, tunnels=False), idle_ms=0)


def test_a_lease_going_back_is_not_asked_for_in_the_same_report() -> None:
    """An agent in `returned` gets no ask, whatever its rate."""
    running = {"a": Holding(remaining=0, short=100, streams=1), "b": Holding(short=5)}
    assert asks(RULES, running, {"a": MB}, 10, returned={"a": 7}) == {"b": 5 + MB}


def test_a_tunnel_of_an_agent_that_can_pay_primes_the_floor_once_a_stay() -> None:
    """A new tunnel, no bytes here, can pay: the floor, once; gone back, not again that stay."""
    m = machine(min_want=MB, idle_return_ms=5000)
    m.caught_up()  # online
    fresh = {"a": Holding(tunnels=True, can_pay=True)}
    assert m.returns(fresh, now=0) == {}  # each round asks what goes back first
    step = m.flush(usage={}, tunnel_time={}, holdings=fresh, returned={}, now=0)
    assert step.report is not None
    assert step.report.leases == (LeaseAsk(agent_id="a", want=MB, returned=0),)
    assert step.offline_grants == {}
    m.written(step.report)
    lease = _Lease(agent_id="a", granted_total=MB, valid_until=10**9)
    m.answered(seq=step.report.seq, answer=_Answer(step.report.seq, (lease,)), now=10)
    held = {"a": Holding(remaining=MB, tunnels=True, can_pay=True)}
    assert m.flush(usage={}, tunnel_time={}, holdings=held, returned={}, now=1000).report is None
    assert m.returns(held, now=5000) == {"a": MB}  # unused: back after idle_return
    back = m.flush(usage={}, tunnel_time={}, holdings=held, returned={"a": MB}, now=5000).report
    assert back is not None and back.leases == (LeaseAsk(agent_id="a", want=0, returned=MB),)
    m.written(back)
    for now in (6000, 7000):  # the same stay: not primed again
        assert (
            m.flush(usage={}, tunnel_time={}, holdings=fresh, returned={}, now=now).report is None
        )
    gone = {"a": Holding(tunnels=False, can_pay=True)}
    assert m.flush(usage={}, tunnel_time={}, holdings=gone, returned={}, now=8000).report is None
    again = m.flush(usage={}, tunnel_time={}, holdings=fresh, returned={}, now=9000).report
    assert again is not None and again.leases == (LeaseAsk(agent_id="a", want=MB, returned=0),)


def test_no_prime_without_money_a_tunnel_or_an_empty_bucket() -> None:
    """Not paying, no tunnel here, or bytes already held: a tunnel asks nothing by itself."""
    m = machine(min_want=MB)
    quiet = {
        "broke": Holding(tunnels=True, can_pay=False),
        "away": Holding(tunnels=False, can_pay=True, streams=1),
        "held": Holding(remaining=10, tunnels=True, can_pay=True),
    }
    assert m.flush(usage={}, tunnel_time={}, holdings=quiet, returned={}, now=0).report is None
    assert RULES.primes(Holding(tunnels=True, can_pay=True))
    assert not RULES.primes(Holding(tunnels=True, can_pay=True, short=5))  # `want` asks


def test_an_agent_that_waits_asks_its_need_and_is_not_primed_on_top() -> None:
    """A stream already waiting when the tunnel is first seen: one ask, its need plus the floor."""
    m = machine(min_want=MB)
    waiting = {"a": Holding(short=100, streams=1, tunnels=True, can_pay=True)}
    step = m.flush(usage={}, tunnel_time={}, holdings=waiting, returned={}, now=0)
    assert step.report is not None
    assert step.report.leases == (LeaseAsk(agent_id="a", want=MB + 100, returned=0),)


def test_offline_a_prime_is_asked_not_granted_from_the_allowance() -> None:
    """Billing away under "continue": a fresh tunnel gets no offline allowance, only an ask."""
    m = machine(min_want=MB, offline_policy="continue", offline_allowance=500_000)
    m.failed(seq=1, reason="down", now=0)
    fresh = {"a": Holding(tunnels=True, can_pay=True)}
    step = m.flush(usage={}, tunnel_time={}, holdings=fresh, returned={}, now=0)
    assert step.offline_grants == {}
    assert step.report is not None and step.report.leases[0].want == MB


def machine(**kw: int | str) -> SyncMachine:
    m = SyncMachine(SyncSettings(**kw), random.Random(1).random)  # type: ignore[arg-type]
    m.start(1)
    return m


def test_the_machine_returns_an_idle_lease_then_asks_nothing() -> None:
    """The issue's relay r1: a lease held for an agent that left goes back and is not re-taken."""
    m = machine(idle_return_ms=5000, min_want=MB)
    m.caught_up()  # online
    left = {"a": Holding(remaining=100_000, streams=0, tunnels=True)}
    assert m.returns(left, now=0) == {}
    assert m.returns(left, now=4999) == {}
    assert m.returns(left, now=5000) == {"a": 100_000}
    step = m.flush(usage={}, tunnel_time={}, holdings=left, returned={"a": 100_000}, now=5000)
    assert step.report is not None
    assert step.report.leases == (LeaseAsk(agent_id="a", want=0, returned=100_000),)
    m.written(step.report)
    empty = {"a": Holding(remaining=0, streams=0, tunnels=True)}
    later = m.flush(usage={}, tunnel_time={}, holdings=empty, returned={}, now=6000)
    assert later.report is None  # nothing asked again: a quiet interval


def test_flush_sets_low_water_from_the_measured_rate() -> None:
    """A measured rate raises the bucket's low water and sizes the ask."""
    m = machine(min_want=MB, low_water=200_000, interval_ms=1000)
    held = {"a": Holding(remaining=MB, streams=1)}
    m.flush(usage={}, tunnel_time={}, holdings=held, returned={}, now=0)
    step = m.flush(usage={("a", "t"): 50 * MB}, tunnel_time={}, holdings=held, returned={}, now=500)
    assert step.low_water == {"a": 25 * MB}  # 100 MB/s, a quarter interval
    assert step.report is not None
    (ask,) = step.report.leases
    assert ask.want == 145 * MB - MB  # interval, two round trips and low water, less held
    lease = _Lease(agent_id="a", granted_total=119 * MB, valid_until=10**9)
    applied = m.answered(seq=step.report.seq, answer=_Answer(step.report.seq, (lease,)), now=500)
    assert isinstance(applied, Applied) and applied.updates[0].low_water == 0  # rate known


def test_a_first_grant_before_any_rate_sets_low_water_at_three_quarters() -> None:
    """A stream that just started waits: its first lease starts a round again at half."""
    m = machine(min_want=10 * MB, low_water=MB)
    waiting = {"a": Holding(short=4096, streams=1)}
    report = m.flush(usage={}, tunnel_time={}, holdings=waiting, returned={}, now=0).report
    assert report is not None and report.leases[0].want == 10 * MB + 4096
    lease = _Lease(agent_id="a", granted_total=10 * MB + 4096, valid_until=10**9)
    applied = m.answered(seq=report.seq, answer=_Answer(report.seq, (lease,)), now=10)
    assert isinstance(applied, Applied) and applied.updates[0].low_water == 7_503_072
    m.written(report)
    # a quarter used 20 ms after the grant: the rate is measured from the grant, not the ask
    used = {("a", "t"): 2_500_000}
    step = m.flush(usage=used, tunnel_time={}, holdings=waiting, returned={}, now=30)
    assert step.low_water == {"a": 125 * MB // 4}  # 125 MB/s, a quarter interval


# -- property: a relay, its bucket, its streams and a billing API ------------------------


@dataclass
class World:
    """One agent's bucket on a relay synced by a machine, billing granting from a capacity."""

    m: SyncMachine
    capacity: int
    bucket: Bucket = field(default_factory=lambda: Bucket("a", slice_bytes=4096))
    meters: list[Meter] = field(default_factory=list)
    tunnels: bool = True
    can_pay: bool = False
    primed: bool = False  # this stay of its tunnels was primed (a floor asked, no need)
    now: int = 0
    granted: int = 0  # the billing API's lease total for this relay
    offline_given: int = 0  # over every outage
    reported_used: int = 0
    reported_returned: int = 0
    last_report_used: int = 0

    def holding(self) -> dict[str, Holding]:
        b = self.bucket
        return {
            "a": Holding(
                remaining=b.remaining,
                short=b.short,
                streams=b.meters,
                tunnels=self.tunnels,
                can_pay=self.can_pay,
            )
        }

    def send(self, index: int, n: int) -> None:
        if self.meters:
            meter = self.meters[index % len(self.meters)]
            if not meter.waiting:
                self.bucket.take(meter, n)

    def round(self) -> Report | None:
        b = self.bucket
        rates_before = b.used - self.last_report_used
        holdings = self.holding()
        returned = {}
        for agent_id, nbytes in self.m.returns(holdings, self.now).items():
            returned[agent_id] = b.revoke(nbytes)
        step = self.m.flush(
            usage={("a", "t"): b.used},
            tunnel_time={},
            holdings=holdings,
            returned={a: n for a, n in returned.items() if n},
            now=self.now,
        )
        for nbytes in step.offline_grants.values():
            self.offline_given += nbytes
            self.flush_owed(b.grant(nbytes))
        report = step.report
        if report is None:
            return None
        self.m.written(report)
        if not self.tunnels:
            self.primed = False  # the stay ended: the next tunnel may prime again
        for ask in report.leases:
            held = holdings["a"]
            if ask.want and not (held.short > 0 or rates_before > 0):
                # else only a tunnel's prime: can pay, nothing held, once a stay
                assert held.tunnels and held.can_pay and held.remaining == 0, (ask, held)
                assert not self.primed, "primed twice in one stay"
                self.primed = True
            assert not (ask.want and ask.returned), "a returned lease asked for again"
        self.last_report_used = b.used
        self.reported_used += report.used.get("a", 0)
        self.reported_returned += report.returned.get("a", 0)
        return report

    def bill(self, report: Report, online: bool) -> None:
        if not online:
            self.m.failed(seq=report.seq, reason="down", now=self.now)
            return
        outstanding = max(0, self.granted - self.reported_used - self.reported_returned)
        want = sum(ask.want for ask in report.leases)
        self.granted += min(want, max(0, self.capacity - outstanding))
        lease = _Lease(agent_id="a", granted_total=self.granted, valid_until=self.now + 10**9)
        step = self.m.answered(seq=report.seq, answer=_Answer(report.seq, (lease,)), now=self.now)
        assert isinstance(step, Applied)
        for agent_id, nbytes in step.reclaim.items():
            self.m.unreclaimed(agent_id, nbytes - self.bucket.revoke(nbytes))
        for update in step.updates:
            self.flush_owed(self.bucket.grant(update.grant))
        self.m.caught_up()
        # reconciled: the relay holds what billing thinks it holds, to the byte
        owed = sum(m.owed for m in self.meters)
        assert owed == 0
        truth = self.granted - self.reported_returned - self.bucket.used
        assert self.bucket.remaining == max(0, truth), (self.bucket.remaining, truth)

    @staticmethod
    def flush_owed(woken: tuple[Meter, ...]) -> None:
        """The pumps of woken meters send their held bytes (what a grant handed them)."""
        for meter in woken:
            meter.flush(meter.owed)


@dataclass(frozen=True)
class _Lease:
    agent_id: str
    granted_total: int
    valid_until: int
    status: str = "active"


class _Answer:
    def __init__(self, seq: int, leases: tuple[_Lease, ...]) -> None:
        self.seq, self.duplicate, self.leases = seq, False, leases


_steps = st.one_of(
    st.tuples(st.just("open")),
    st.tuples(st.just("close"), st.integers(0, 7)),
    st.tuples(st.just("send"), st.integers(0, 7), st.integers(1, 50_000)),
    st.tuples(st.just("send"), st.integers(0, 7), st.integers(1, 50_000)),
    st.tuples(st.just("round"), st.booleans()),
    st.tuples(st.just("round"), st.just(True)),
    st.tuples(st.just("tick"), st.integers(0, 3000)),
    st.tuples(st.just("tunnel"), st.booleans()),
    st.tuples(st.just("pay"), st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(_steps, max_size=60), capacity=st.integers(0, 400_000))
def test_leases_follow_traffic_and_never_pass_a_byte_beyond_a_grant(
    steps: list[tuple[object, ...]], capacity: int
) -> None:
    """No byte past what was granted; asks for waiting or moving traffic, or a prime once a stay."""
    m = machine(
        min_want=20_000,
        max_want=200_000,
        offline_policy="continue",
        offline_allowance=30_000,
        idle_return_ms=2000,
    )
    w = World(m=m, capacity=capacity)
    for step in steps:
        match step:
            case ("open",):
                w.meters.append(w.bucket.attach(object()))
            case ("close", int(i)) if w.meters:
                w.flush_owed(w.bucket.detach(w.meters.pop(i % len(w.meters))))
            case ("send", int(i), int(n)):
                w.send(i, n)
            case ("round", bool(online)):
                report = w.round()
                if report is not None:
                    w.bill(report, online)
            case ("tick", int(ms)):
                w.now += ms
            case ("tunnel", bool(on)):
                w.tunnels = on
            case ("pay", bool(on)):
                w.can_pay = on
        # never a byte beyond what billing granted plus the offline allowance handed out
        assert w.bucket.used <= w.granted + w.offline_given
        assert w.bucket.remaining >= 0
    assert w.bucket.passed_total == w.bucket.used


def test_reports_queued_in_an_outage_ask_for_an_agent_once() -> None:
    """While a report asking for an agent waits for its answer, later reports do not ask again."""
    m = machine(min_want=MB)
    waiting = {"a": Holding(short=100, streams=1)}
    seqs = []
    for now in (0, 1000, 2000):
        report = m.flush(usage={}, tunnel_time={}, holdings=waiting, returned={}, now=now).report
        if report is not None:
            m.written(report)
            m.failed(seq=report.seq, reason="down", now=now)
        seqs.append([ask.want for ask in report.leases] if report else [])
    assert seqs == [[100 + MB], [], []]
    m.answered(seq=1, answer=_Answer(1, ()), now=3000)
    step = m.flush(usage={}, tunnel_time={}, holdings=waiting, returned={}, now=3000)
    assert step.report is not None and [a.want for a in step.report.leases] == [100 + MB]
