"""The quota agent's sync machine: playbooks, and usage reported exactly once under faults."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quota.core.errors import IllegalTransition
from quota.core.relay_sync import Holding
from quota.core.sync import (
    Applied,
    HeldLease,
    LeaseAsk,
    Report,
    Retry,
    SyncMachine,
    SyncSettings,
    UsageLine,
    next_due,
)

KEY = ("agt_a", "t1")


@dataclass(frozen=True)
class Lease:
    agent_id: str
    status: str = "active"
    granted_total: int = 0
    valid_until: int = 0


@dataclass(frozen=True)
class Answer:
    seq: int
    duplicate: bool = False
    leases: tuple[Lease, ...] = ()


def machine(next_seq: int = 1, **kw: object) -> SyncMachine:
    m = SyncMachine(SyncSettings(**kw), random.Random(1).random)  # type: ignore[arg-type]
    m.start(next_seq)
    return m


def holdings(needs: dict[str, int]) -> dict[str, Holding]:
    """Buckets whose streams wait for `needs` bytes."""
    return {agent_id: Holding(short=short, streams=1) for agent_id, short in needs.items()}


def flush(m: SyncMachine, used: int = 0, now: int = 0, **kw: dict[str, int]) -> Report | None:
    usage = {KEY: used} if used else {}
    return m.flush(
        usage=usage,
        tunnel_time=kw.get("time", {}),  # type: ignore[arg-type]
        holdings=holdings(kw.get("needs", {})),
        returned=kw.get("returned", {}),
        now=now,
    ).report


def test_reports_are_numbered_from_the_journal_and_a_number_is_spent_when_written() -> None:
    """The first report carries the journal's next number; the next one the number after."""
    m = machine(next_seq=7)
    first = flush(m, used=100)
    assert first is not None and first.seq == 7
    assert first.items == (
        UsageLine(agent_id="agt_a", tunnel_id="t1", bytes=100, tunnel_seconds=0),
    )
    assert first.used == {"agt_a": 100}
    m.written(first)
    second = flush(m, used=150)
    assert second is not None and second.seq == 8 and second.used == {"agt_a": 50}


def test_a_report_not_written_is_folded_whole_into_the_next_under_the_same_number() -> None:
    """Bytes, seconds and returned lease of an unwritten report go into the next one."""
    m = machine(idle_return_ms=1)
    first = flush(m, used=100, time={KEY: 1500}, returned={"agt_a": 40})  # type: ignore[arg-type]
    assert first is not None
    m.unwritten(first)
    again = flush(m, used=130, time={KEY: 2000})  # type: ignore[arg-type]
    assert again is not None and again.seq == first.seq
    assert again.items == (
        UsageLine(agent_id="agt_a", tunnel_id="t1", bytes=130, tunnel_seconds=2),
    )
    assert again.leases == (LeaseAsk(agent_id="agt_a", want=0, returned=40),)
    assert again.returned == {"agt_a": 40}
    with pytest.raises(IllegalTransition):
        m.written(first)  # only the report in flight can be written


def test_a_write_that_never_finished_is_folded_at_the_next_flush() -> None:
    """A flush while a report is still in flight reports its bytes again under its number."""
    m = machine()
    first = flush(m, used=100)
    again = flush(m, used=100)
    assert first is not None and again is not None
    assert again.seq == first.seq and again.used == {"agt_a": 100}


def test_flush_before_start_is_refused() -> None:
    """Without the journal's next number there is no report to number."""
    m = SyncMachine(SyncSettings(), random.random)
    with pytest.raises(IllegalTransition):
        flush(m, used=1)


def test_wants_cover_waiters_and_pushed_agents_are_asked_about() -> None:
    """A waiting agent asks for its need plus a lease for its rate; a pushed one for its state."""
    m = machine(min_want=1000, interval_ms=1000)
    m.written(flush(m, used=600, now=0) or pytest.fail("no report"))
    assert m.push(kind="changed", reason="deposit", agent_ids=["agt_b"]) is False
    report = flush(m, used=900, now=1000, needs={"agt_a": 5000})
    assert report is not None
    assert report.leases == (
        LeaseAsk(agent_id="agt_a", want=5000 + 1000, returned=0),  # 300 B/s: the floor
        LeaseAsk(agent_id="agt_b", want=0, returned=0),
    )


def test_quiet_intervals_send_a_heartbeat_every_n() -> None:
    """With nothing to say, only every `heartbeat_every`-th interval makes an (empty) report."""
    m = machine(heartbeat_every=3)
    got = []
    for _ in range(6):
        report = flush(m)
        got.append(report is not None)
        if report is not None:
            assert report.items == () and report.leases == ()
            m.written(report)
    assert got == [False, False, True, False, False, True]


def test_an_answer_grants_only_growth_and_a_duplicate_never_twice() -> None:
    """Leases grow buckets by granted_total - applied; a duplicate extends no validity."""
    m = machine()
    lease = Lease(agent_id="agt_a", granted_total=1000, valid_until=50)
    step = m.answered(seq=1, answer=Answer(seq=1, leases=(lease,)), now=0)
    assert isinstance(step, Applied) and step.applied == {"agt_a": 1000}
    assert [(u.agent_id, u.grant, u.active) for u in step.updates] == [("agt_a", 1000, True)]
    later = Lease(agent_id="agt_a", granted_total=1000, valid_until=90, status="inactive")
    step = m.answered(seq=2, answer=Answer(seq=2, duplicate=True, leases=(later,)), now=0)
    assert isinstance(step, Applied) and step.applied == {} and step.duplicate
    assert [(u.grant, u.active) for u in step.updates] == [(0, False)]
    assert m.expired(49) == [] and m.expired(50) == ["agt_a"] and m.expired(100) == []
    unknown = Lease(agent_id="agt_x", status="unknown", granted_total=5)
    step = m.answered(seq=3, answer=Answer(seq=3, leases=(unknown,)), now=0)
    assert isinstance(step, Applied) and step.updates == ()


def test_an_answer_says_whether_billing_gave_all_that_was_asked() -> None:
    """Granted less than the report asked: exhausted; all of it: not; not asked: unknown."""
    m = machine(min_want=1000)
    for seq, granted_total in ((1, 400), (2, 1410)):  # each asks 10 waiting + the 1000 floor
        report = flush(m, needs={"agt_a": 10})
        assert report is not None and report.seq == seq
        m.written(report)
        answer = Answer(seq=seq, leases=(Lease(agent_id="agt_a", granted_total=granted_total),))
        step = m.answered(seq=seq, answer=answer, now=0)
        assert isinstance(step, Applied)
        assert [u.exhausted for u in step.updates] == [seq == 1]
    report = flush(m, used=5)
    assert report is not None
    m.written(report)
    answer = Answer(seq=3, leases=(Lease(agent_id="agt_a", granted_total=1410),))
    step = m.answered(seq=3, answer=answer, now=0)
    assert isinstance(step, Applied) and [u.exhausted for u in step.updates] == [None]


def test_a_wrong_answer_or_a_failure_backs_off_and_success_resets() -> None:
    """An answer for another seq is a failure; no send before the backoff; catching up resets."""
    m = machine(backoff_max_ms=15_000)
    step = m.answered(seq=4, answer=Answer(seq=5), now=1000)
    assert isinstance(step, Retry) and step.reason == "answer for seq 5, expected 4"
    assert step.announce and 250 <= step.delay_ms <= 500 and not m.online and m.offline
    assert not m.may_send(1000 + step.delay_ms - 1) and m.may_send(1000 + step.delay_ms)
    second = m.failed(seq=4, reason="down", now=2000)
    assert not second.announce and 500 <= second.delay_ms <= 1000
    assert m.caught_up() == 2 and m.online and m.may_send(0)
    assert m.caught_up() is None  # already online: nothing to announce


def _offline_flush(m: SyncMachine, needs: dict[str, int]) -> dict[str, int]:
    return dict(
        m.flush(
            usage={}, tunnel_time={}, holdings=holdings(needs), returned={}, now=0
        ).offline_grants
    )


def test_offline_continue_hands_out_the_whole_allowance_at_once() -> None:
    """Billing away, "continue": a waiting agent gets all its allowance in one go, once."""
    m = machine(offline_policy="continue", offline_allowance=50_000)
    assert _offline_flush(m, {"agt_a": 30_000}) == {}  # not known to be offline yet
    m.failed(seq=1, reason="down", now=0)
    given = [_offline_flush(m, {"agt_a": 30_000, "agt_b": 0}) for _ in range(3)]
    assert given == [{"agt_a": 50_000}, {}, {}]  # agt_b waits for nothing: it gets nothing
    m.caught_up()
    m.failed(seq=1, reason="down", now=0)
    assert _offline_flush(m, {"agt_a": 10}) == {}  # no answer came between: same outage


def test_the_first_answer_after_an_outage_nets_out_the_offline_bytes() -> None:
    """Offline bytes are paid back from the answer's grants; what those miss is taken back."""
    m = machine(offline_policy="continue", offline_allowance=50_000)
    m.failed(seq=1, reason="down", now=0)
    assert _offline_flush(m, {"agt_a": 1}) == {"agt_a": 50_000}
    lease = Lease(agent_id="agt_a", granted_total=1000, valid_until=50)
    step = m.answered(seq=1, answer=Answer(seq=1, leases=(lease,)), now=0)
    assert isinstance(step, Applied) and step.reclaim == {"agt_a": 49_000}
    assert [u.grant for u in step.updates] == [0] and step.applied == {"agt_a": 1000}
    m.caught_up()
    m.failed(seq=2, reason="down", now=0)
    assert _offline_flush(m, {"agt_a": 1}) == {"agt_a": 50_000}  # a new outage, a new allowance
    m.dropped("agt_a", 20_000)  # its lease expired meanwhile: 20,000 unused offline bytes gone
    lease = Lease(agent_id="agt_a", granted_total=101_000, valid_until=50)
    step = m.answered(seq=2, answer=Answer(seq=2, leases=(lease,)), now=0)
    assert isinstance(step, Applied) and step.reclaim == {}
    assert [u.grant for u in step.updates] == [100_000 - 30_000]
    step = m.answered(seq=3, answer=Answer(seq=3, leases=(lease,)), now=0)
    assert isinstance(step, Applied) and step.reclaim == {} and step.updates[0].grant == 0


def test_offline_bytes_used_beyond_the_answer_are_paid_from_the_next_grants() -> None:
    """What a reclaim could not take back (streams used it) is paid first by later grants."""
    m = machine(offline_policy="continue", offline_allowance=50_000)
    m.failed(seq=1, reason="down", now=0)
    assert _offline_flush(m, {"agt_a": 1}) == {"agt_a": 50_000}
    answer = Answer(seq=1, leases=(Lease(agent_id="agt_a", granted_total=0, valid_until=50),))
    step = m.answered(seq=1, answer=answer, now=0)
    assert isinstance(step, Applied) and step.reclaim == {"agt_a": 50_000}
    m.unreclaimed("agt_a", 30_000)  # the bucket gave back 20,000: 30,000 were relayed
    m.caught_up()
    answer = Answer(seq=2, leases=(Lease(agent_id="agt_a", granted_total=20_000, valid_until=50),))
    step = m.answered(seq=2, answer=answer, now=0)
    assert isinstance(step, Applied) and [u.grant for u in step.updates] == [0]
    pushed = m.pushed(leases=[Lease(agent_id="agt_a", granted_total=45_000, valid_until=50)], now=0)
    assert pushed is not None and [u.grant for u in pushed.updates] == [15_000]
    answer = Answer(seq=3, leases=(Lease(agent_id="agt_a", granted_total=50_000, valid_until=50),))
    step = m.answered(seq=3, answer=answer, now=0)
    assert isinstance(step, Applied) and [u.grant for u in step.updates] == [5_000]


def test_pause_policy_grants_nothing_and_leases_go_back_only_online() -> None:
    """ "pause" never grants offline; leases are given back only while billing answers."""
    m = machine(offline_allowance=50_000)
    gone = {"a": Holding(remaining=10, tunnels=False)}
    assert m.returns(gone, now=0) == {}
    m.failed(seq=1, reason="down", now=0)
    assert _offline_flush(m, {"a": 1}) == {}
    assert m.returns(gone, now=0) == {}
    m.caught_up()
    assert m.returns(gone, now=0) == {"a": 10}


def test_restore_puts_back_what_the_journal_holds_unused() -> None:
    """Applied minus used minus returned goes back; the applied total counts for answers."""
    m = machine()
    held = {
        "a": HeldLease(agent_id="a", applied_total=1000, used_total=300, returned_total=100),
        "b": HeldLease(agent_id="b", applied_total=10, used_total=30, returned_total=0),
    }
    assert m.restore(held) == {"a": 600}
    step = m.answered(
        seq=1, answer=Answer(seq=1, leases=(Lease(agent_id="a", granted_total=1500),)), now=0
    )
    assert isinstance(step, Applied) and step.updates[0].grant == 500


def test_pushes_and_the_journal_backoff() -> None:
    """Hello and registry reasons re-read the registry; journal failures back off on their own."""
    m = machine()
    assert m.push(kind="hello", reason="", agent_ids=[]) is True
    assert m.push(kind="changed", reason="revoke", agent_ids=["a"]) is True
    delay = m.journal_failed(100)
    assert 250 <= delay <= 500 and not m.journal_due(100) and m.may_send(100)
    m.retry_now()
    assert m.journal_due(100)
    assert 500 <= m.journal_failed(100) <= 1000
    m.journal_ok()
    assert 250 <= m.journal_failed(100) <= 500


def test_next_due_keeps_a_fixed_cadence() -> None:
    """A slow round skips the ticks it missed instead of stretching the interval."""
    assert next_due(10.0, 9.0, 1.0) == 10.0
    assert next_due(10.0, 12.5, 1.0) == 13.0


# -- property: a world of faults -----------------------------------------------------


@dataclass
class World:
    """A machine, a journal that may refuse writes, a billing API that may fail or lose answers."""

    m: SyncMachine
    now: int = 0
    counted: Counter[tuple[str, str]] = field(default_factory=Counter)  # this process's counters
    total: int = 0  # bytes counted over all processes
    journal: dict[int, Report] = field(default_factory=dict)  # pending reports
    written: dict[int, Report] = field(default_factory=dict)  # every report ever written
    next_seq: int = 1
    write_fault: bool = False
    billing: str = "up"  # or "down", or "lossy" (applies, but the answer is lost)
    applied: dict[int, Report] = field(default_factory=dict)
    billed: int = 0
    granted: int = 0  # the billing API's cumulative lease for agt_a
    put_in_buckets: int = 0

    def flush(self) -> None:
        report = self.m.flush(
            usage=dict(self.counted), tunnel_time={}, holdings={}, returned={}, now=self.now
        ).report
        if report is None:
            return
        if self.write_fault:
            self.m.unwritten(report)
            return
        assert report.seq == self.next_seq and report.seq not in self.written
        self.journal[report.seq] = self.written[report.seq] = report
        self.next_seq += 1
        self.m.written(report)

    def send(self) -> None:
        if not self.m.may_send(self.now):
            return
        for seq in sorted(self.journal):
            if self.billing == "down":
                self.m.failed(seq=seq, reason="down", now=self.now)
                return
            answer = self._bill(seq, self.journal[seq])
            if self.billing == "lossy":
                self.m.failed(seq=seq, reason="timeout", now=self.now)
                return
            step = self.m.answered(seq=seq, answer=answer, now=self.now)
            assert isinstance(step, Applied)
            self.put_in_buckets += sum(u.grant for u in step.updates)
            del self.journal[seq]
        self.m.caught_up()

    def _bill(self, seq: int, report: Report) -> Answer:
        duplicate = seq in self.applied
        if duplicate:
            assert self.applied[seq] == report, "one number, two bodies"
        else:
            self.applied[seq] = report
            self.billed += sum(line.bytes for line in report.items)
            self.granted += 100
        lease = Lease(agent_id="agt_a", granted_total=self.granted, valid_until=self.now + 10**9)
        return Answer(seq=seq, duplicate=duplicate, leases=(lease,))

    def restart(self) -> None:
        """A graceful stop (last counts written) and a new process on the same journal."""
        self.write_fault = False
        self.flush()
        self.m = SyncMachine(self.m.settings, random.Random(self.now).random)
        self.m.start(self.next_seq)
        self.m.restore(
            {
                "agt_a": HeldLease(
                    agent_id="agt_a",
                    applied_total=self.put_in_buckets,
                    used_total=0,
                    returned_total=0,
                )
            }
        )
        self.counted.clear()


_use = st.tuples(st.just("use"), st.sampled_from(["t1", "t2"]), st.integers(0, 10_000))
_step = st.one_of(  # counting, flushing and sending are the common steps
    _use,
    _use,
    st.tuples(st.just("flush")),
    st.tuples(st.just("flush")),
    st.tuples(st.just("send")),
    st.tuples(st.just("send")),
    st.tuples(st.just("tick"), st.integers(0, 5000)),
    st.tuples(st.just("fault"), st.booleans()),
    st.tuples(st.just("billing"), st.sampled_from(["up", "down", "lossy", "lossy"])),
    st.tuples(st.just("restart")),
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(_step, max_size=60), seed=st.integers(0, 2**32))
def test_usage_reported_equals_usage_counted_across_faults_and_restarts(
    steps: list[tuple[object, ...]], seed: int
) -> None:
    """Every byte counted is billed once, one body a number, and every grant applied once."""
    w = World(m=machine(heartbeat_every=2))
    w.m = SyncMachine(w.m.settings, random.Random(seed).random)
    w.m.start(1)
    w.granted = w.put_in_buckets = 500  # a lease left by an earlier run
    w.m.restore(
        {"agt_a": HeldLease(agent_id="agt_a", applied_total=500, used_total=0, returned_total=0)}
    )
    for step in steps:
        match step:
            case ("use", tunnel, int(n)):
                w.counted[("agt_a", str(tunnel))] += n
                w.total += n
            case ("flush",):
                w.flush()
            case ("send",):
                w.send()
            case ("tick", int(ms)):
                w.now += ms
            case ("fault", bool(on)):
                w.write_fault = on
            case ("billing", str(mode)):
                w.billing = mode
            case ("restart",):
                w.restart()
    w.write_fault, w.billing = False, "up"
    w.flush()
    w.m.retry_now()
    w.send()
    assert w.journal == {} and w.billed == w.total
    assert sorted(w.applied) == list(range(1, w.next_seq))
    assert w.put_in_buckets == w.granted


def test_a_pushed_lease_adds_what_its_total_adds_and_the_next_answer_nothing_more() -> None:
    """Pushed totals apply like an answer's: once, and an answer with the same total adds 0."""
    m = machine()
    m.caught_up()  # online
    first = m.pushed(leases=(Lease("agt_a", granted_total=5_000, valid_until=9_000),), now=0)
    assert first is not None and first.applied == {"agt_a": 5_000}
    assert [(u.agent_id, u.grant, u.active) for u in first.updates] == [("agt_a", 5_000, True)]
    again = m.pushed(leases=(Lease("agt_a", granted_total=5_000, valid_until=9_000),), now=1)
    assert again is not None and again.updates == ()
    unknown = m.pushed(leases=(Lease("agt_b", status="unknown", granted_total=7),), now=1)
    assert unknown is not None and unknown.updates == ()
    report = m.flush(
        usage={},
        tunnel_time={},
        holdings=holdings({"agt_a": 100}),
        returned={},
        now=2,
    ).report
    assert report is not None
    m.written(report)
    lease = Lease("agt_a", granted_total=6_000, valid_until=10_000)
    step = m.answered(seq=report.seq, answer=Answer(report.seq, leases=(lease,)), now=3)
    assert isinstance(step, Applied) and [u.grant for u in step.updates] == [1_000]
    assert m.expired(9_999) == [] and m.expired(10_000) == ["agt_a"]


def test_a_pushed_lease_waits_for_an_answer_while_offline_bytes_are_owed() -> None:
    """Offline or owing offline bytes, a push is left to the next answer, which nets them out."""
    m = machine(offline_policy="continue", offline_allowance=1_000)
    lease = (Lease("agt_a", granted_total=5_000, valid_until=9_000),)
    assert m.pushed(leases=lease, now=0) is None  # not online yet
    m.failed(seq=1, reason="down", now=0)
    step = m.flush(usage={}, tunnel_time={}, holdings=holdings({"agt_a": 10}), returned={}, now=0)
    assert step.offline_grants == {"agt_a": 1_000}
    m.caught_up()
    assert m.pushed(leases=lease, now=1) is None  # 1,000 offline bytes still owed
