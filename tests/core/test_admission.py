"""Admission before login: sshd's MaxStartups, per-source limit, tries, grace, reserve."""

from __future__ import annotations

import time
from collections.abc import Hashable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from quota.core.admission import (
    Accept,
    Admission,
    AdmissionConfig,
    Disconnect,
    Drop,
    Kind,
    MaxStartups,
    Reason,
    parse_max_startups,
    source_key,
)
from quota.core.errors import InvalidValue

NEVER = 99  # a roll that MaxStartups drops only with certainty
ALWAYS = 0  # a roll that any chance above zero drops


@pytest.mark.parametrize(
    ("standing", "percent"),
    [(0, 0), (9, 0), (10, 30), (11, 30), (12, 31), (20, 37), (55, 65), (99, 99), (100, 100)],
)
def test_drop_percent_is_sshds_integer_ramp(standing: int, percent: int) -> None:
    """10:30:100 drops 30% at 10 standing, rising by truncated integer steps to 100% at 100."""
    assert MaxStartups().drop_percent(standing) == percent


def test_drops_compares_the_roll_like_sshd() -> None:
    """A connection is dropped when roll < p: at p=30, rolls 0..29 drop and 30..99 pass."""
    ramp = MaxStartups()
    assert [ramp.drops(10, r) for r in (0, 29, 30, 99)] == [True, True, False, False]
    assert ramp.drops(100, 99) and not ramp.drops(9, 0)
    with pytest.raises(InvalidValue, match=r"roll 100 is outside 0\.\.99"):
        ramp.drops(10, 100)


def test_rate_100_drops_everything_from_start() -> None:
    """With rate 100 (or a single number) every connection past `start` is dropped."""
    assert MaxStartups(start=5, rate=100, full=50).drop_percent(5) == 100
    single = parse_max_startups("10")
    assert (single.start, single.full) == (10, 10)
    assert [single.drop_percent(n) for n in (9, 10)] == [0, 100]


def test_parse_max_startups() -> None:
    """ "10:30:100" and an int parse to start, rate and full."""
    assert parse_max_startups(" 10:30:100 ") == MaxStartups()
    assert parse_max_startups("3:50:6") == MaxStartups(start=3, rate=50, full=6)
    assert parse_max_startups(7) == MaxStartups(start=7, full=7)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("10:30", "is not start:rate:full"),
        ("", "is not start:rate:full"),
        ("10:30:100:5", "is not start:rate:full"),
        ("-1:30:100", "is not start:rate:full"),
        ("\uff11\uff10:30:100", "is not start:rate:full"),
        ("9" * 5000, r"'9999999999999999'\.\.\. is not start:rate:full"),
        ("100:30:10", "start 100 is above full 10"),
        ("10:0:100", r"rate 0 is outside 1\.\.100"),
        ("10:101:100", r"rate 101 is outside 1\.\.100"),
        ("0:30:100", "start and full must be at least 1"),
        (True, "is not start:rate:full"),
    ],
)
def test_parse_max_startups_names_the_problem(text: str, problem: str) -> None:
    """Each malformed spec is refused with the key and what is wrong with it."""
    with pytest.raises(InvalidValue, match=f"max_startups: .*{problem}"):
        parse_max_startups(text)


def test_parse_max_startups_refuses_5000_digits_fast() -> None:
    """A huge spec is refused by the pattern's digit limit, not parsed as a big int."""
    started = time.perf_counter()
    for _ in range(1000):
        with pytest.raises(InvalidValue):
            parse_max_startups("1" * 5000 + ":30:100")
    assert time.perf_counter() - started < 0.5


def test_source_key_groups_by_netblock() -> None:
    """Addresses count per source network; IPv4-mapped IPv6 counts as IPv4."""
    assert source_key("192.0.2.7") == "192.0.2.7/32"
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7/32"
    assert source_key("2001:db8::1", v6_prefix=64) == source_key("2001:db8::ffff", v6_prefix=64)
    assert source_key("/run/relay.sock") == "/run/relay.sock"


def admit(adm: Admission, conn: Hashable, source: str = "a", now: int = 0) -> Accept | Drop:
    return adm.connect(conn, source=source, kind=Kind.SSH, now=now, roll=NEVER)


def test_one_source_gets_at_most_ten_silent_connections() -> None:
    """1,100 silent connections from one address: 10 admitted, the rest dropped per source."""
    adm = Admission(AdmissionConfig())
    decisions = [admit(adm, i, "attacker") for i in range(1100)]
    assert decisions.count(Accept()) == 10
    assert set(decisions[10:]) == {Drop(reason=Reason.PER_SOURCE)}
    assert admit(adm, "agent", "agent-host") == Accept()
    assert adm.refusals[Reason.PER_SOURCE] == 1090


def test_startups_are_never_above_full() -> None:
    """Past `full` unauthenticated connections every new one is dropped, whatever the roll."""
    adm = Admission(AdmissionConfig(max_startups=MaxStartups(start=3, rate=50, full=6)))
    assert [admit(adm, i, f"s{i}") for i in range(3)] == [Accept()] * 3
    assert admit(adm, "x", "sx") == Accept()  # roll 99 >= 50: passes the random drop
    assert adm.connect("y", source="sy", kind=Kind.SSH, now=0, roll=ALWAYS) == Drop(
        reason=Reason.MAX_STARTUPS
    )
    for i in range(10, 12):
        admit(adm, i, f"s{i}")
    assert adm.unauthenticated == 6
    assert admit(adm, "z", "sz") == Drop(reason=Reason.MAX_STARTUPS)


def test_public_peers_are_not_startups() -> None:
    """Public-port peers are not limited by MaxStartups or per source, only by the total."""
    adm = Admission(AdmissionConfig(per_source=1))
    for i in range(50):
        assert adm.connect(i, source="p", kind=Kind.PUBLIC, now=0, roll=ALWAYS) == Accept()
    assert (adm.total, adm.unauthenticated) == (50, 0)


def test_the_sixth_auth_failure_disconnects_and_a_right_key_after_it_does_not_log_in() -> None:
    """Five wrong keys are allowed; the sixth disconnects; a right key then changes nothing."""
    adm = Admission(AdmissionConfig())
    admit(adm, "c")
    assert [adm.auth_failed("c") for _ in range(5)] == [Accept()] * 5
    bye = Disconnect(reason=Reason.MAX_AUTH_TRIES)
    assert adm.auth_failed("c") == bye
    assert bye.message == "Too many authentication failures"
    assert adm.authenticated("c", holds_tunnels=True) == bye
    assert adm.unauthenticated == 1  # counted until the socket is closed
    adm.closed("c")
    assert (adm.total, adm.unauthenticated, adm.standing("a")) == (0, 0, 0)


def test_login_grace_disconnects_each_silent_connection_once() -> None:
    """A connection still unauthenticated 30 s after it came is disconnected, once."""
    adm = Admission(AdmissionConfig())
    admit(adm, "early", now=1_000)
    admit(adm, "late", now=5_000)
    admit(adm, "ok", now=6_000)
    adm.authenticated("ok", holds_tunnels=False)
    assert adm.next_deadline() == 31_000
    assert adm.expire(30_999) == []
    assert adm.expire(35_000) == [
        ("early", Disconnect(reason=Reason.LOGIN_GRACE)),
        ("late", Disconnect(reason=Reason.LOGIN_GRACE)),
    ]
    assert adm.expire(99_000) == [] and adm.next_deadline() is None
    assert adm.auth_failed("early") == Disconnect(reason=Reason.LOGIN_GRACE)


def test_login_grace_zero_never_expires() -> None:
    """LoginGraceTime 0 means no limit, as in sshd."""
    adm = Admission(AdmissionConfig(login_grace_ms=0))
    admit(adm, "c")
    assert adm.expire(10**12) == [] and adm.next_deadline() is None


def test_the_reserve_is_kept_for_agents_holding_tunnels() -> None:
    """Public peers stop at the cap; SSH logins in the reserve stay only for tunnel holders."""
    cfg = AdmissionConfig(descriptor_limit=20, reserve=6, tunnel_reserve=4, per_source=100)
    adm = Admission(cfg)
    for i in range(14):
        assert adm.connect(i, source="p", kind=Kind.PUBLIC, now=0, roll=NEVER) == Accept()
    full = Drop(reason=Reason.CONNECTION_LIMIT)
    assert adm.connect("p15", source="p", kind=Kind.PUBLIC, now=0, roll=NEVER) == full
    assert admit(adm, "flood") == full  # an untrusted source never takes the reserve
    trusted = [
        adm.connect(f"s{i}", source="a", kind=Kind.SSH, now=0, roll=ALWAYS, trusted=True)
        for i in range(5)
    ]
    assert trusted == [Accept()] * 4 + [full]
    assert adm.authenticated("s0", holds_tunnels=True) == Accept()
    assert adm.authenticated("s1", holds_tunnels=False) == Disconnect(
        reason=Reason.CONNECTION_LIMIT
    )
    assert adm.total == 18  # 2 descriptors of the reserve are never handed out


def test_a_trusted_source_is_spared_the_random_drop_but_not_the_per_source_limit() -> None:
    """With startups full, a tunnel holder's address still logs in, up to its per-source share."""
    adm = Admission(AdmissionConfig(max_startups=MaxStartups(start=2, rate=30, full=4)))
    assert [admit(adm, i, f"s{i}") for i in range(4)] == [Accept()] * 4
    assert admit(adm, "x", "agent-host") == Drop(reason=Reason.MAX_STARTUPS)
    kept = [
        adm.connect(f"t{i}", source="agent-host", kind=Kind.SSH, now=0, roll=0, trusted=True)
        for i in range(11)
    ]
    assert kept == [Accept()] * 10 + [Drop(reason=Reason.PER_SOURCE)]
    assert adm.connect("p", source="agent-host", kind=Kind.PUBLIC, now=0, roll=0, trusted=True) == (
        Accept()
    )


def test_a_login_below_the_cap_needs_no_tunnels() -> None:
    """With room below the cap, an agent without tunnels logs in."""
    adm = Admission(AdmissionConfig())
    admit(adm, "c")
    assert adm.authenticated("c", holds_tunnels=False) == Accept()
    assert (adm.total, adm.unauthenticated) == (1, 0)


def test_caller_mistakes_are_errors() -> None:
    """Closing twice, unknown connections, a reused id and time going back are refused."""
    adm = Admission(AdmissionConfig())
    admit(adm, "c", now=10)
    with pytest.raises(InvalidValue, match="already admitted"):
        admit(adm, "c", now=10)
    with pytest.raises(InvalidValue, match="time went back"):
        admit(adm, "d", now=9)
    with pytest.raises(InvalidValue, match="not waiting to log in"):
        adm.auth_failed("nobody")
    adm.closed("c")
    with pytest.raises(InvalidValue, match="closed twice"):
        adm.closed("c")


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"per_source": 0}, "per_source: must be at least 1"),
        ({"max_auth_tries": 0}, "max_auth_tries: must be at least 1"),
        ({"login_grace_ms": -1}, "login_grace: must not be negative"),
        ({"reserve": 1024}, "reserve: need"),
        ({"tunnel_reserve": 200}, "reserve: need"),
    ],
)
def test_config_errors_name_the_key(changes: dict[str, int], problem: str) -> None:
    """Impossible limits are refused naming the key."""
    with pytest.raises(InvalidValue, match=problem):
        AdmissionConfig(**changes)  # type: ignore[arg-type]


SOURCES = ["a", "b", "c"]
CFG = AdmissionConfig(
    max_startups=MaxStartups(start=3, rate=30, full=8),
    per_source=4,
    login_grace_ms=1_000,
    max_auth_tries=3,
    descriptor_limit=16,
    reserve=5,
    tunnel_reserve=3,
)


class AdmissionMachine(RuleBasedStateMachine):
    """Random events; the counts always match the connections the model holds."""

    def __init__(self) -> None:
        super().__init__()
        self.adm = Admission(CFG)
        self.now = 0
        self.next_id = 0
        self.waiting: dict[int, str] = {}  # unauthenticated, not told to go
        self.doomed: dict[int, str] = {}
        self.logged_in: set[int] = set()
        self.failures: dict[int, int] = {}

    @rule(source=st.sampled_from(SOURCES), ssh=st.booleans(), roll=st.integers(0, 99))
    def connect(self, source: str, ssh: bool, roll: int) -> None:
        conn, self.next_id = self.next_id, self.next_id + 1
        kind = Kind.SSH if ssh else Kind.PUBLIC
        if isinstance(
            self.adm.connect(conn, source=source, kind=kind, now=self.now, roll=roll), Accept
        ):
            if ssh:
                self.waiting[conn] = source
            else:
                self.logged_in.add(conn)

    @precondition(lambda self: self.waiting)
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(sorted(self.waiting)))
        self.failures[conn] = self.failures.get(conn, 0) + 1
        if isinstance(self.adm.auth_failed(conn), Disconnect):
            assert self.failures[conn] == CFG.max_auth_tries
            self.doomed[conn] = self.waiting.pop(conn)

    @precondition(lambda self: self.waiting)
    @rule(data=st.data(), holds=st.booleans())
    def log_in(self, data: st.DataObject, holds: bool) -> None:
        conn = data.draw(st.sampled_from(sorted(self.waiting)))
        if isinstance(self.adm.authenticated(conn, holds_tunnels=holds), Accept):
            self.waiting.pop(conn)
            self.logged_in.add(conn)
        else:
            assert not holds
            self.doomed[conn] = self.waiting.pop(conn)

    @precondition(lambda self: self.waiting or self.doomed or self.logged_in)
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(sorted({*self.waiting, *self.doomed, *self.logged_in})))
        self.adm.closed(conn)
        self.waiting.pop(conn, None)
        self.doomed.pop(conn, None)
        self.logged_in.discard(conn)

    @rule(ms=st.integers(0, 1_500))
    def tick(self, ms: int) -> None:
        self.now += ms
        for conn, decision in self.adm.expire(self.now):
            assert decision.reason is Reason.LOGIN_GRACE and isinstance(conn, int)
            self.doomed[conn] = self.waiting.pop(conn)

    @invariant()
    def counts_match_the_model(self) -> None:
        adm = self.adm
        assert adm.unauthenticated == len(self.waiting) + len(self.doomed) <= CFG.max_startups.full
        assert adm.total == adm.unauthenticated + len(self.logged_in)
        assert adm.total <= CFG.descriptor_limit - (CFG.reserve - CFG.tunnel_reserve)
        for source in SOURCES:
            held = [s for s in [*self.waiting.values(), *self.doomed.values()] if s == source]
            assert adm.standing(source) == len(held) <= CFG.per_source
        deadline = adm.next_deadline()
        assert deadline is None or deadline > self.now


TestAdmissionMachine = AdmissionMachine.TestCase
TestAdmissionMachine.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)


def test_a_connection_held_for_another_gate_counts_descriptors_only() -> None:
    """A held connection (admitted by a supervisor) takes room, not a start-up, until closed."""
    adm = Admission(AdmissionConfig(descriptor_limit=5, reserve=3, tunnel_reserve=1))
    assert adm.held("passed") == Accept()
    assert (adm.total, adm.unauthenticated, adm.standing("10.0.0.1/32")) == (1, 0, 0)
    with pytest.raises(InvalidValue):
        adm.held("passed")
    assert adm.connect("ssh", source="10.0.0.1/32", kind=Kind.SSH, now=0, roll=NEVER) == Accept()
    dropped = adm.connect("late", source="10.0.0.2/32", kind=Kind.PUBLIC, now=0, roll=NEVER)
    assert dropped == Drop(reason=Reason.CONNECTION_LIMIT)
    assert adm.held("more") == Drop(reason=Reason.CONNECTION_LIMIT)  # this process is full
    assert adm.held("agent", trusted=True) == Accept()  # the tunnel reserve
    assert adm.refusals[Reason.CONNECTION_LIMIT] == 2
    adm.closed("passed")
    assert (adm.total, adm.unauthenticated) == (2, 1)
