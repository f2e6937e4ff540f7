"""Fair shares: per-agent, per-connection, per-tunnel and per-source limits with named causes."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from quota.core.errors import InvalidValue
from quota.core.shares import Cause, Granted, Refused, Share, ShareLimits, Shares


def test_defaults_are_the_documented_limits() -> None:
    """16 SSH connections, 64 channels, 8 ports, 64 endpoints, 512 streams, 64 and 64 a source."""
    limits = ShareLimits()
    assert {share.value: limits.limit(share) for share in Share} == {
        "ssh_connections_per_agent": 16,
        "channels_per_connection": 64,
        "public_ports_per_agent": 8,
        "endpoints_per_agent": 64,
        "streams_per_tunnel": 512,
        "connections_per_source": 64,
        "udp_flows_per_source": 64,
    }


def test_causes_are_stable_snake_case() -> None:
    """Every cause value is the snake_case a `refused` record carries."""
    assert [c.value for c in Cause] == [
        "too_many_ssh_connections",
        "too_many_channels",
        "too_many_public_ports",
        "too_many_endpoints",
        "too_many_streams",
        "too_many_connections_from_source",
        "too_many_udp_flows_from_source",
    ]


def test_one_agent_cannot_hold_300_connections() -> None:
    """The 17th SSH connection of an agent is refused, naming the cause and the limit."""
    shares = Shares()
    got = [shares.acquire(Share.SSH_CONNECTIONS_PER_AGENT, agent="a1") for _ in range(300)]
    assert got[:16] == [Granted()] * 16
    refused = got[16]
    assert isinstance(refused, Refused) and set(got[16:]) == {refused}
    assert refused.cause is Cause.TOO_MANY_SSH_CONNECTIONS and refused.limit == 16
    assert refused.message == (
        "too many SSH connections of agent a1: 16 at most (ssh_connections_per_agent)"
    )
    assert shares.acquire(Share.SSH_CONNECTIONS_PER_AGENT, agent="a2") == Granted()


def test_channels_are_counted_per_connection() -> None:
    """2,000 channels on one connection: 64 granted; another connection has its own 64."""
    shares = Shares()
    got = [
        shares.acquire(Share.CHANNELS_PER_CONNECTION, agent="a", scope="conn-1")
        for _ in range(2000)
    ]
    assert got.count(Granted()) == 64
    assert shares.acquire(Share.CHANNELS_PER_CONNECTION, agent="a", scope="conn-2") == Granted()


def test_public_ports_per_agent_leave_the_range_to_others() -> None:
    """One agent gets 8 public ports; the 9th is refused and another account still gets one."""
    shares = Shares()
    for _ in range(8):
        assert shares.acquire(Share.PUBLIC_PORTS_PER_AGENT, agent="greedy") == Granted()
    refused = shares.acquire(Share.PUBLIC_PORTS_PER_AGENT, agent="greedy")
    assert isinstance(refused, Refused) and refused.cause is Cause.TOO_MANY_PUBLIC_PORTS
    assert shares.acquire(Share.PUBLIC_PORTS_PER_AGENT, agent="other") == Granted()


def test_per_agent_override_raises_and_lowers_a_limit() -> None:
    """An agent's own limits replace the defaults; lowering keeps what is held."""
    shares = Shares()
    shares.set_limits("big", ShareLimits().overridden({"endpoints_per_agent": 5000}))
    for _ in range(5000):
        assert shares.acquire(Share.ENDPOINTS_PER_AGENT, agent="big") == Granted()
    shares.set_limits("big", ShareLimits().overridden({"endpoints_per_agent": 10}))
    assert isinstance(shares.acquire(Share.ENDPOINTS_PER_AGENT, agent="big"), Refused)
    assert shares.count(Share.ENDPOINTS_PER_AGENT, "big") == 5000
    shares.set_limits("big", None)
    assert shares.limits_for("big") == ShareLimits()


def test_release_of_what_was_not_acquired_is_an_error() -> None:
    """A release with nothing held raises and leaves the count at zero."""
    shares = Shares()
    with pytest.raises(InvalidValue, match="none is held"):
        shares.release(Share.STREAMS_PER_TUNNEL, agent="a", scope="t1")
    shares.acquire(Share.STREAMS_PER_TUNNEL, agent="a", scope="t1")
    shares.release(Share.STREAMS_PER_TUNNEL, agent="a", scope="t1")
    with pytest.raises(InvalidValue, match="none is held"):
        shares.release(Share.STREAMS_PER_TUNNEL, agent="a", scope="t1")
    assert shares.count(Share.STREAMS_PER_TUNNEL, "t1") == 0 and len(shares) == 0


def test_scopes_must_fit_the_share() -> None:
    """Per-agent shares take no other scope; the others need one."""
    shares = Shares()
    with pytest.raises(InvalidValue, match="needs a scope"):
        shares.acquire(Share.UDP_FLOWS_PER_SOURCE, agent="a")
    with pytest.raises(InvalidValue, match="counted per agent"):
        shares.acquire(Share.ENDPOINTS_PER_AGENT, agent="a", scope="b")


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"channels": 3}, r"unknown limits \['channels'\]"),
        ({"streams_per_tunnel": -1}, "streams_per_tunnel: must be a whole number >= 0"),
        ({"streams_per_tunnel": "9"}, "streams_per_tunnel: must be a whole number >= 0"),
        ({"streams_per_tunnel": True}, "streams_per_tunnel: must be a whole number >= 0"),
    ],
)
def test_overrides_are_checked(overrides: dict[str, object], problem: str) -> None:
    """A bad override names the key."""
    with pytest.raises(InvalidValue, match=problem):
        ShareLimits().overridden(overrides)


AGENTS = ["a", "b"]
SCOPES = ["x", "y"]
SCOPE = st.sampled_from(SCOPES)


class SharesMachine(RuleBasedStateMachine):
    """Random acquires and releases against a plain model of the counts."""

    def __init__(self) -> None:
        super().__init__()
        small = ShareLimits(**{share.value: 3 for share in Share})
        self.shares = Shares(small)
        self.shares.set_limits("b", small.overridden({s.value: 1 for s in Share}))
        self.model: dict[tuple[Share, str], int] = {}

    def key(self, share: Share, agent: str, scope: str) -> tuple[Share, str]:
        return (share, agent if share.per_agent else scope)

    @rule(
        share=st.sampled_from(Share), agent=st.sampled_from(AGENTS), scope=st.sampled_from(SCOPES)
    )
    def acquire(self, share: Share, agent: str, scope: str) -> None:
        key = self.key(share, agent, scope)
        got = self.shares.acquire(share, agent=agent, scope=None if share.per_agent else scope)
        limit = self.shares.limits_for(agent).limit(share)
        assert isinstance(got, Granted) == (self.model.get(key, 0) < limit)
        if isinstance(got, Granted):
            self.model[key] = self.model.get(key, 0) + 1
        else:
            assert got.share is share and got.limit == limit

    @rule(
        share=st.sampled_from(Share), agent=st.sampled_from(AGENTS), scope=st.sampled_from(SCOPES)
    )
    def release(self, share: Share, agent: str, scope: str) -> None:
        key = self.key(share, agent, scope)
        before = self.shares.count(*key)
        try:
            self.shares.release(share, agent=agent, scope=None if share.per_agent else scope)
        except InvalidValue:
            assert self.model.get(key, 0) == 0 and self.shares.count(*key) == before == 0
        else:
            self.model[key] -= 1

    @invariant()
    def counts_match_and_stay_within_limits(self) -> None:
        for share in Share:
            for scope in [*AGENTS, *SCOPES]:
                held = self.shares.count(share, scope)
                assert held == self.model.get((share, scope), 0)
                assert 0 <= held <= 3
        assert len(self.shares) == sum(1 for n in self.model.values() if n)


TestSharesMachine = SharesMachine.TestCase
TestSharesMachine.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
