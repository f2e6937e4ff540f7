"""Stream decisions: playbooks event by event, and properties over a shared bucket."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from quota.core.bucket import Bucket, Meter
from quota.core.stream import LOGGED_REASONS, PauseReason, PauseSet, StreamState
from quota.core.streams import (
    Action,
    AttachPeers,
    BufferDrained,
    BufferFull,
    BytesHeld,
    Close,
    CloseLegs,
    CloseRequested,
    Datagram,
    EofBothWays,
    Event,
    FlowPaused,
    FlowResumed,
    GrantWatch,
    HeldCleared,
    Interim,
    LegConnected,
    LegLost,
    LogRecord,
    OperatorPaused,
    Pause,
    Register,
    Resume,
    Side,
    StreamMachine,
    WantGrant,
    other,
)

QUOTA = (PauseReason.QUOTA, PauseReason.LEASE, PauseReason.INACTIVE)
BUFFER_FLOW = frozenset({PauseReason.BUFFER, PauseReason.FLOW})


def opened(datagrams: bool = False) -> StreamMachine:
    m = StreamMachine(opened_at_ms=0, datagrams=datagrams)
    m.handle(LegConnected(all_connected=True, now_ms=0))
    return m


# -- playbooks ------------------------------------------------------------------------


def test_opens_once_both_legs_connected() -> None:
    """The first leg changes nothing; the second registers, logs "open", joins the legs."""
    m = StreamMachine(opened_at_ms=5)
    assert m.handle(LegConnected(all_connected=False, now_ms=6)) == ()
    assert m.handle(LegConnected(all_connected=True, now_ms=7)) == (
        Register(),
        LogRecord(event="open"),
        AttachPeers(),
    )
    assert m.state is StreamState.OPEN
    assert m.handle(LegConnected(all_connected=True, now_ms=8)) == ()


def test_held_bytes_pause_and_log_once_then_resume_when_nothing_is_held() -> None:
    """A pause is logged on the edge only; resume waits until no leg holds bytes."""
    m = opened()
    assert m.handle(BytesHeld(inactive=False, now_ms=10)) == (
        Pause(reason=PauseReason.QUOTA),
        LogRecord(event="pause"),
    )
    assert m.handle(BytesHeld(inactive=False, now_ms=11)) == ()
    assert m.handle(HeldCleared(holding=True, now_ms=12)) == ()
    assert m.handle(HeldCleared(holding=False, now_ms=30)) == (
        LogRecord(event="resume"),
        Resume(reasons=QUOTA),
    )
    assert m.state is StreamState.OPEN
    assert (m.clock.count, m.clock.paused_ms) == (1, 20)


def test_an_inactive_owner_pauses_with_its_own_reason() -> None:
    """An inactive owner's stream pauses for INACTIVE, even with nothing held."""
    m = opened()
    assert m.handle(BytesHeld(inactive=True, now_ms=1))[0] == Pause(reason=PauseReason.INACTIVE)
    assert m.state is StreamState.PAUSED


def test_a_lease_wait_turns_into_quota_when_billing_has_nothing_more() -> None:
    """Waiting for a lease is LEASE; billing's "no more" switches it to QUOTA, one pause."""
    m = opened()
    assert m.handle(BytesHeld(inactive=False, can_pay=True, now_ms=10)) == (
        Pause(reason=PauseReason.LEASE),
        LogRecord(event="pause"),
    )
    assert m.handle(BytesHeld(inactive=False, can_pay=False, now_ms=25)) == (
        Pause(reason=PauseReason.QUOTA),
        Resume(reasons=(PauseReason.LEASE,)),
        LogRecord(event="reason"),
    )
    assert m.handle(HeldCleared(holding=False, now_ms=100)) == (
        LogRecord(event="resume"),
        Resume(reasons=QUOTA),
    )
    clock = m.clock
    assert (clock.count, clock.paused_ms) == (1, 90)
    assert [clock.reason_ms(r, 100) for r in LOGGED_REASONS] == [0, 0, 75, 15, 0]


def test_an_owner_active_again_while_holding_waits_for_its_bucket_not_inactive() -> None:
    """INACTIVE gives way to the bucket's reason when the owner is active but bytes still wait."""
    m = opened()
    m.handle(BytesHeld(inactive=True, now_ms=0))
    assert m.handle(BytesHeld(inactive=False, now_ms=40)) == (
        Pause(reason=PauseReason.QUOTA),
        Resume(reasons=(PauseReason.INACTIVE,)),
        LogRecord(event="reason"),
    )
    assert m.clock.reason_ms(PauseReason.INACTIVE, 50) == 40
    assert m.clock.reason_ms(PauseReason.QUOTA, 50) == 10


def test_an_operator_pause_holds_until_the_operator_resumes() -> None:
    """OPERATOR pauses both legs and is logged; held bytes clearing does not lift it."""
    m = opened()
    assert m.handle(OperatorPaused(paused=True, now_ms=5)) == (
        Pause(reason=PauseReason.OPERATOR),
        LogRecord(event="pause"),
    )
    assert m.handle(OperatorPaused(paused=True, now_ms=6)) == ()
    m.handle(BytesHeld(inactive=False, now_ms=7))
    assert m.handle(HeldCleared(holding=False, now_ms=8)) == (Resume(reasons=QUOTA),)
    assert m.state is StreamState.PAUSED
    assert m.handle(OperatorPaused(paused=False, now_ms=20)) == (
        LogRecord(event="resume"),
        Resume(reasons=(PauseReason.OPERATOR,)),
    )
    assert m.clock.reason_ms(PauseReason.OPERATOR, 20) == 15


def test_an_owner_gone_inactive_while_connecting_is_paused_from_the_open() -> None:
    """A reason that came before both legs connected is logged right after "open"."""
    m = StreamMachine(opened_at_ms=0)
    assert m.handle(BytesHeld(inactive=True, now_ms=1)) == (Pause(reason=PauseReason.INACTIVE),)
    assert m.handle(LegConnected(all_connected=True, now_ms=2)) == (
        Register(),
        LogRecord(event="open"),
        AttachPeers(),
        LogRecord(event="pause"),
    )
    assert m.handle(HeldCleared(holding=False, now_ms=9)) == (
        LogRecord(event="resume"),
        Resume(reasons=QUOTA),
    )
    assert m.clock.reason_ms(PauseReason.INACTIVE, 9) == 7


def test_dropped_datagrams_log_the_reason_their_bucket_gives() -> None:
    """A drop while a lease is on its way is LEASE; one after billing's no is QUOTA."""
    m = opened(datagrams=True)
    assert m.handle(Datagram(passed=False, can_pay=True, now_ms=1)) == (LogRecord(event="pause"),)
    assert m.handle(Datagram(passed=False, can_pay=True, now_ms=2)) == ()
    assert m.handle(Datagram(passed=False, now_ms=4)) == (LogRecord(event="reason"),)
    assert m.handle(Datagram(passed=True, now_ms=9)) == (LogRecord(event="resume"),)
    assert m.clock.reason_ms(PauseReason.LEASE, 9) == 3
    assert m.clock.reason_ms(PauseReason.QUOTA, 9) == 5


def test_a_stream_still_connecting_pauses_without_a_record() -> None:
    """Held bytes before the stream opened pause the legs but log nothing."""
    m = StreamMachine(opened_at_ms=0)
    assert m.handle(BytesHeld(inactive=False, now_ms=1)) == (Pause(reason=PauseReason.QUOTA),)
    assert m.state is StreamState.OPENING


def test_flow_control_pauses_the_other_side_only_once_joined() -> None:
    """A full write buffer toward one side stops reading the other side, for FLOW only."""
    m = StreamMachine(opened_at_ms=0)
    assert m.handle(FlowPaused(side=Side.UP)) == ()
    m.handle(LegConnected(all_connected=True, now_ms=0))
    assert m.handle(FlowPaused(side=Side.UP)) == (
        Pause(reason=PauseReason.FLOW, sides=(Side.DOWN,)),
    )
    assert m.handle(FlowResumed(side=Side.DOWN)) == (
        Resume(reasons=(PauseReason.FLOW,), sides=(Side.UP,)),
    )


def _apply(legs: dict[Side, PauseSet], actions: tuple[Action, ...]) -> None:
    """Carry out Pause and Resume on the legs' pause sets, as relay.tcp.stream does."""
    for action in actions:
        if isinstance(action, Pause):
            for side in action.sides:
                legs[side].add(action.reason)
        elif isinstance(action, Resume):
            for side in action.sides:
                for reason in action.reasons:
                    legs[side].discard(reason)


def test_a_buffer_pause_composes_with_quota_and_flow_pauses() -> None:
    """A full write buffer pauses the other side for BUFFER; it reads once every reason is gone."""
    m = opened()
    legs = {side: PauseSet() for side in Side}
    steps: list[tuple[Event, frozenset[PauseReason]]] = [
        (BufferFull(side=Side.UP, now_ms=1), frozenset({PauseReason.BUFFER})),
        (FlowPaused(side=Side.UP), BUFFER_FLOW),
        (BytesHeld(inactive=False, now_ms=2), frozenset({*QUOTA[:1], *BUFFER_FLOW})),
        (HeldCleared(holding=False, now_ms=3), BUFFER_FLOW),
        (FlowResumed(side=Side.UP), frozenset({PauseReason.BUFFER})),
        (BufferDrained(side=Side.UP, now_ms=4), frozenset()),
    ]
    for event, down in steps:
        _apply(legs, m.handle(event))
        assert legs[Side.DOWN].reasons == down, event
    assert not legs[Side.UP]  # the quota pause and resume touched both legs
    assert m.handle(BufferDrained(side=Side.UP, now_ms=5)) == ()  # nothing was full


def test_a_buffer_pause_is_logged_once_it_spans_an_interim_interval() -> None:
    """The second interim tick to find a buffer pause logs it from its start; draining resumes."""
    m = opened()
    assert m.handle(BufferFull(side=Side.DOWN, now_ms=100)) == (
        Pause(reason=PauseReason.BUFFER, sides=(Side.UP,)),
    )
    assert m.handle(Interim(now_ms=1000)) == (LogRecord(event="interim"),)
    assert m.handle(Interim(now_ms=2000)) == (LogRecord(event="pause"), LogRecord(event="interim"))
    assert m.state is StreamState.PAUSED
    assert m.handle(Interim(now_ms=3000)) == (LogRecord(event="interim"),)
    assert m.handle(BufferDrained(side=Side.DOWN, now_ms=3500)) == (
        LogRecord(event="resume"),
        Resume(reasons=(PauseReason.BUFFER,), sides=(Side.UP,)),
    )
    assert (m.state, m.clock.count, m.clock.paused_ms) == (StreamState.OPEN, 1, 3400)


def test_short_buffer_pauses_are_never_logged() -> None:
    """A buffer pause that ends before the next interim tick leaves no record, however many."""
    m = opened()
    for tick in range(1, 4):
        m.handle(BufferFull(side=Side.UP, now_ms=tick * 1000 - 500))
        assert m.handle(Interim(now_ms=tick * 1000)) == (LogRecord(event="interim"),)
        assert LogRecord(event="resume") not in m.handle(
            BufferDrained(side=Side.UP, now_ms=tick * 1000 + 1)
        )
    assert (m.state, m.clock.count) == (StreamState.OPEN, 0)


def test_a_logged_buffer_pause_and_a_quota_pause_log_one_pause_and_one_resume() -> None:
    """Quota and buffer pauses overlapping: "pause" at the first, "resume" after the last."""
    m = opened()
    m.handle(BytesHeld(inactive=False, now_ms=0))
    m.handle(BufferFull(side=Side.UP, now_ms=10))
    m.handle(Interim(now_ms=1000))
    assert m.handle(Interim(now_ms=2000)) == (LogRecord(event="interim"),)
    assert m.handle(HeldCleared(holding=False, now_ms=2500)) == (
        LogRecord(event="reason"),
        Resume(reasons=QUOTA),
    )
    assert m.state is StreamState.PAUSED
    assert m.handle(BufferDrained(side=Side.UP, now_ms=3000))[0] == LogRecord(event="resume")
    assert (m.state, m.clock.count, m.clock.paused_ms) == (StreamState.OPEN, 1, 3000)
    by_reason = {r: m.clock.reason_ms(r, 3000) for r in (PauseReason.QUOTA, PauseReason.BUFFER)}
    assert by_reason == {PauseReason.QUOTA: 2500, PauseReason.BUFFER: 500}


def test_buffer_events_before_the_legs_are_joined_do_nothing() -> None:
    """A stream still connecting has written nothing toward a side: no buffer pause."""
    m = StreamMachine(opened_at_ms=0)
    assert m.handle(BufferFull(side=Side.UP, now_ms=1)) == ()
    assert m.handle(BufferDrained(side=Side.UP, now_ms=2)) == ()


def test_a_lost_leg_closes_the_other_and_the_stream_once() -> None:
    """Losing the connecting side closes the owner's leg and the stream; later events do nothing."""
    m = opened()
    assert m.handle(LegLost(side=Side.UP, now_ms=3)) == (
        CloseLegs(sides=(Side.DOWN,)),
        LogRecord(event="close"),
        Close(reason="peer_closed"),
    )
    assert m.state is StreamState.CLOSED and m.close_reason == "peer_closed"
    later: list[Event] = [
        LegLost(side=Side.DOWN, now_ms=4),
        EofBothWays(now_ms=4),
        CloseRequested(reason="x", now_ms=4),
        BytesHeld(inactive=False, now_ms=4),
        Interim(now_ms=4),
    ]
    assert [m.handle(e) for e in later] == [()] * len(later)


def test_the_owner_side_lost_is_agent_closed_and_eof_both_ways_is_done() -> None:
    """Close reasons name who ended the stream."""
    m = opened()
    assert m.handle(LegLost(side=Side.DOWN, now_ms=1))[-1] == Close(reason="agent_closed")
    m = opened()
    assert m.handle(EofBothWays(now_ms=1)) == (
        CloseLegs(),
        LogRecord(event="close"),
        Close(reason="done"),
    )


def test_a_stream_refused_while_opening_closes_without_a_record() -> None:
    """A stream never opened (the owner refused) closes, but the log has nothing to close."""
    m = StreamMachine(opened_at_ms=0)
    event = CloseRequested(reason="agent_refused", now_ms=1, close_legs=False)
    assert m.handle(event) == (Close(reason="agent_refused"),)


def test_a_close_ends_a_running_pause() -> None:
    """A stream closed while paused counts the pause up to the close."""
    m = opened()
    m.handle(BytesHeld(inactive=False, now_ms=10))
    m.handle(CloseRequested(reason="relay_shutdown", now_ms=25))
    assert (m.clock.count, m.clock.total_ms(1000)) == (1, 15)


def test_datagrams_mark_pause_and_open_without_pausing_sockets() -> None:
    """A dropped datagram logs a pause, the next one passed logs a resume; nothing is held."""
    m = opened(datagrams=True)
    assert m.handle(Datagram(passed=True, now_ms=1)) == ()
    assert m.handle(Datagram(passed=False, now_ms=2)) == (LogRecord(event="pause"),)
    assert m.handle(Datagram(passed=False, now_ms=3)) == ()
    assert m.handle(BytesHeld(inactive=True, now_ms=4)) == ()
    assert m.handle(HeldCleared(holding=False, now_ms=4)) == ()
    assert m.handle(Datagram(passed=True, now_ms=5)) == (LogRecord(event="resume"),)


def test_interim_records_only_while_live() -> None:
    """A live stream gets interim records; a closed one none."""
    m = opened()
    assert m.handle(Interim(now_ms=1)) == (LogRecord(event="interim"),)
    m.handle(CloseRequested(reason="operator", now_ms=2))
    assert m.handle(Interim(now_ms=3)) == ()


def test_a_grant_is_wanted_once_per_crossing_of_low_water() -> None:
    """GrantWatch asks once when low water is crossed, again only after it recovered."""
    watch = GrantWatch()
    assert watch.check("a", True, 5) == WantGrant(agent_id="a", remaining=5)
    assert watch.check("a", True, 4) is None
    assert watch.check("b", True, 9) == WantGrant(agent_id="b", remaining=9)
    assert watch.check("a", False, 50) is None
    assert watch.check("a", True, 3) == WantGrant(agent_id="a", remaining=3)


# -- properties over a shared bucket ------------------------------------------------------


class _Leg:
    """A leg as relay.tcp.pump does it, without sockets: forward, hold, flush."""

    def __init__(self, stream: _Stream, side: Side, bucket: Bucket) -> None:
        self.stream = stream
        self.side = side
        self.meter = bucket.attach(self)
        self.reasons: set[PauseReason] = set()
        self.held = 0
        self.offered = 0
        self.forwarded = 0

    def offer(self, n: int) -> None:
        self.offered += n
        m = self.meter
        if not self.held and n <= m.allowance:
            m.allowance -= n
            m.passed += n
            self.forwarded += n
            return
        take = m.bucket.take(m, n)
        self.forwarded += take.passed
        self.held += n - take.passed
        if self.held:
            sim = self.stream.sim
            held = BytesHeld(inactive=m.bucket.inactive, can_pay=sim.can_pay, now_ms=sim.now)
            self.stream.handle(held)
        self.stream.sim.wake(take.wakes)

    def on_wake(self) -> None:
        k = self.meter.flush(self.held)
        self.held -= k
        self.forwarded += k
        if not self.held:
            now = self.stream.sim.now
            self.stream.handle(HeldCleared(holding=self.stream.holding(), now_ms=now))


class _Stream:
    """A dispatcher as relay.hub.stream does it, carrying out the machine's actions."""

    def __init__(self, sim: StreamSim, bucket: Bucket) -> None:
        self.sim = sim
        self.bucket = bucket
        self.machine = StreamMachine(opened_at_ms=0)
        self.legs = {side: _Leg(self, side, bucket) for side in Side}
        self.closes: list[str] = []
        self.close_records = 0
        self.full: set[Side] = set()  # sides whose write buffer is above high water
        self.edges: list[str] = []  # the "pause" and "resume" records, in order
        self.handle(LegConnected(all_connected=True, now_ms=0))

    def holding(self) -> bool:
        return any(leg.held for leg in self.legs.values())

    def handle(self, event: Event) -> None:
        for action in self.machine.handle(event):
            self.carry_out(action)

    def carry_out(self, action: Action) -> None:
        match action:
            case Pause():
                for side in action.sides:
                    self.legs[side].reasons.add(action.reason)
            case Resume():
                for side in action.sides:
                    self.legs[side].reasons.difference_update(action.reasons)
            case LogRecord(event="close"):
                self.close_records += 1
            case LogRecord(event="pause" | "resume"):
                self.edges.append(action.event)
            case LogRecord(event="reason"):
                assert self.machine.state is StreamState.PAUSED
            case Close():
                self.closes.append(action.reason)
                wakes: tuple[Meter, ...] = ()
                for leg in self.legs.values():
                    wakes += self.bucket.detach(leg.meter)
                self.sim.wake(wakes)


class StreamSim(RuleBasedStateMachine):
    """Streams of one agent sharing a bucket: grants, reads, closes, owner on and off."""

    def __init__(self) -> None:
        super().__init__()
        self.bucket = Bucket("agt", low_water=0, slice_bytes=4096)
        self.granted = 0
        self.now = 0
        self.can_pay = False  # billing's last word: a lease is on its way
        self.streams = [_Stream(self, self.bucket) for _ in range(3)]

    def wake(self, wakes: tuple[Meter, ...]) -> None:
        for meter in wakes:
            owner = meter.owner
            assert isinstance(owner, _Leg)
            owner.on_wake()

    def _legs(self) -> list[_Leg]:
        return [leg for s in self.streams for leg in s.legs.values()]

    @rule(n=st.integers(0, 20_000))
    def grant(self, n: int) -> None:
        self.granted += n
        self.wake(self.bucket.grant(n))

    @rule(i=st.integers(0, 2), side=st.sampled_from(Side), n=st.integers(1, 9_000))
    def read(self, i: int, side: Side, n: int) -> None:
        stream = self.streams[i]
        leg = stream.legs[side]
        if stream.machine.state is not StreamState.CLOSED and not leg.reasons:
            leg.offer(n)

    @rule(i=st.integers(0, 2), lost=st.booleans(), side=st.sampled_from(Side))
    def close(self, i: int, lost: bool, side: Side) -> None:
        now = self.now
        event = LegLost(side=side, now_ms=now) if lost else CloseRequested(reason="x", now_ms=now)
        self.streams[i].handle(event)

    @rule(i=st.integers(0, 2), side=st.sampled_from(Side), full=st.booleans())
    def buffer(self, i: int, side: Side, full: bool) -> None:
        stream = self.streams[i]
        self.now += 1
        if full:
            stream.handle(BufferFull(side=side, now_ms=self.now))
            stream.full.add(side)
        else:
            stream.handle(BufferDrained(side=side, now_ms=self.now))
            stream.full.discard(side)

    @rule()
    def tick(self) -> None:
        self.now += 1
        for s in self.streams:
            s.handle(Interim(now_ms=self.now))

    @rule(active=st.booleans())
    def owner(self, active: bool) -> None:
        self.now += 1
        self.wake(self.bucket.set_inactive(not active))
        for s in self.streams:
            if not active:
                s.handle(BytesHeld(inactive=True, now_ms=self.now))
            elif s.holding():  # active again, still waiting for bytes: for the bucket's reason
                s.handle(BytesHeld(inactive=False, can_pay=self.can_pay, now_ms=self.now))
            else:
                s.handle(HeldCleared(holding=False, now_ms=self.now))

    @rule(can_pay=st.booleans())
    def billing_says(self, can_pay: bool) -> None:
        """Billing granted less than asked (nothing more), or a lease is on its way."""
        self.now += 1
        self.can_pay = can_pay
        for s in self.streams:
            if s.holding() and not self.bucket.inactive:
                s.handle(BytesHeld(inactive=False, can_pay=can_pay, now_ms=self.now))

    @rule(i=st.integers(0, 2), paused=st.booleans())
    def operator(self, i: int, paused: bool) -> None:
        self.now += 1
        self.streams[i].handle(OperatorPaused(paused=paused, now_ms=self.now))

    @invariant()
    def never_more_forwarded_than_granted(self) -> None:
        forwarded = sum(leg.forwarded for leg in self._legs())
        assert forwarded <= self.granted

    @invariant()
    def bytes_in_equal_bytes_counted_plus_held(self) -> None:
        for leg in self._legs():
            assert leg.offered == leg.forwarded + leg.held
            assert leg.meter.passed == leg.forwarded
        assert self.bucket.used == sum(leg.forwarded for leg in self._legs())

    @invariant()
    def closed_at_most_once(self) -> None:
        for s in self.streams:
            assert len(s.closes) <= 1 and s.close_records == len(s.closes)

    @invariant()
    def reads_when_nothing_held_and_owner_active(self) -> None:
        for s in self.streams:
            if s.machine.state is StreamState.CLOSED or s.holding() or self.bucket.inactive:
                continue
            assert all(not leg.reasons & set(QUOTA) for leg in s.legs.values())

    @invariant()
    def paused_time_is_charged_to_one_reason_at_a_time(self) -> None:
        for s in self.streams:
            clock = s.machine.clock
            by_reason = sum(clock.reason_ms(r, self.now) for r in LOGGED_REASONS)
            assert by_reason == clock.total_ms(self.now)

    @invariant()
    def a_held_stream_waits_for_the_reason_billing_gave(self) -> None:
        for s in self.streams:
            if s.machine.state is StreamState.CLOSED or not s.holding():
                continue
            want = (
                PauseReason.INACTIVE
                if self.bucket.inactive
                else (PauseReason.LEASE if self.can_pay else PauseReason.QUOTA)
            )
            for leg in s.legs.values():
                assert leg.reasons & set(QUOTA) == {want}

    @invariant()
    def a_full_buffer_pauses_the_other_side_for_buffer(self) -> None:
        for s in self.streams:
            if s.machine.state is StreamState.CLOSED:
                continue
            for side, leg in s.legs.items():
                assert (PauseReason.BUFFER in leg.reasons) == (other(side) in s.full)

    @invariant()
    def pause_and_resume_records_alternate_and_match_the_state(self) -> None:
        for s in self.streams:
            assert s.edges == ["pause", "resume"] * (len(s.edges) // 2) + ["pause"] * (
                len(s.edges) % 2
            )
            assert s.machine.clock.count == s.edges.count("pause")
            if s.machine.state is not StreamState.CLOSED:
                paused = s.machine.state is StreamState.PAUSED
                assert paused == (s.edges[-1:] == ["pause"])

    @rule()
    def shutdown(self) -> None:
        """Every stream is closed exactly once, however many closes it was asked."""
        for s in self.streams:
            s.handle(CloseRequested(reason="relay_shutdown", now_ms=self.now))
            s.handle(CloseRequested(reason="relay_shutdown", now_ms=self.now))
        assert all(len(s.closes) == 1 and s.close_records == 1 for s in self.streams)
        assert self.bucket.meters == 0


StreamSim.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestStreamSim = StreamSim.TestCase
