"""Fair shares on the relay: config keys, registry overrides, and the tunnel table's counts."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

from quota.core.shares import Share, ShareLimits
from relay.config import load_config
from relay.errors import ConfigError, Refused
from relay.hub.shares import FairShares
from relay.hub.tunnels import UDP_ENDPOINT, TunnelTable
from relay.registry import Agent, Registry, Role

A = Agent(agent_id="a", account="acme", role=Role.CLIENT, keys=frozenset())
B = Agent(agent_id="b", account="acme", role=Role.CLIENT, keys=frozenset())


def test_shares_section_defaults_file_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[shares] has the documented defaults; the file and QUOTARELAY_RELAY_SHARES_* set it."""
    assert load_config(None).shares == ShareLimits()
    assert load_config(None).udp_unanswered_interval_ms == 60_000
    path = tmp_path / "relay.toml"
    path.write_text('[shares]\npublic_ports_per_agent = 2\n[udp]\nunanswered_interval = "5s"\n')
    monkeypatch.setenv("QUOTARELAY_RELAY_SHARES_STREAMS_PER_TUNNEL", "9")
    config = load_config(path)
    assert (config.shares.public_ports_per_agent, config.shares.streams_per_tunnel) == (2, 9)
    assert config.udp_unanswered_interval_ms == 5000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[shares]\nendpoints_per_agent = -1\n", "shares.endpoints_per_agent: must be a whole"),
        ('[shares]\nstreams_per_tunnel = "many"\n', "shares.streams_per_tunnel: must be a whole"),
        ("[shares]\nconnections_per_source = true\n", "shares.connections_per_source"),
        ("[shares]\nports = 1\n", "shares.ports: unknown key"),
        ('[udp]\nunanswered_interval = "soon"\n', "udp.unanswered_interval: not a duration"),
    ],
)
def test_bad_share_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    """A bad [shares] value stops the relay with a message naming the key."""
    path = tmp_path / "relay.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(path)


def _registry(tmp_path: Path, limits: str) -> Registry:
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    path = tmp_path / "agents.toml"
    path.write_text(f'[[agent]]\nid = "a"\naccount = "x"\nkeys = ["{key}"]\n{limits}\n')
    return Registry(path)


def test_registry_limits_override_the_defaults_for_that_agent_only(tmp_path: Path) -> None:
    """An entry's `limits` raise its own shares; other agents keep the config's."""
    agent = _registry(tmp_path, "limits = { public_ports_per_agent = 32 }").get("a")
    assert agent is not None and agent.limits == (("public_ports_per_agent", 32),)
    shares = FairShares(ShareLimits(public_ports_per_agent=1))
    assert shares.limit(agent, "public_ports_per_agent") == 32
    assert shares.limit(B, Share.PUBLIC_PORTS_PER_AGENT) == 1
    assert shares.limit(agent, "streams_per_tunnel") == 512


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ("limits = { ports = 3 }", r"agent\[0\].limits.ports: unknown limit"),
        ("limits = { streams_per_tunnel = -2 }", r"agent\[0\].limits.streams_per_tunnel"),
        ('limits = { streams_per_tunnel = "9" }', r"agent\[0\].limits.streams_per_tunnel"),
        ("limits = 4", r"agent\[0\].limits: a table"),
    ],
)
def test_registry_limit_errors_name_the_entry(tmp_path: Path, limits: str, message: str) -> None:
    """An unknown limit or a bad value is refused naming the entry and the key."""
    with pytest.raises(ConfigError, match=message):
        _registry(tmp_path, limits)


def test_public_ports_are_counted_per_agent_and_given_back() -> None:
    """The share refuses a third port with its cause; removing a tunnel gives one back."""
    table = TunnelTable(range(100, 110), FairShares(ShareLimits(public_ports_per_agent=2)))
    first = table.add_public(A, 100, "", None)
    table.add_public(A, 101, "", None)
    with pytest.raises(Refused, match="too many public ports of agent a: 2") as refused:
        table.add_public(A, 102, "", None)
    assert refused.value.cause == "too_many_public_ports"
    table.add_public(B, 102, "", None)  # another agent's count is its own
    assert table.remove(first) and not table.remove(first)
    table.add_public(A, 103, "", None)


def test_an_endpoint_taken_over_by_its_agent_keeps_one_share() -> None:
    """A reconnect replacing its own endpoint moves the share; TCP and UDP count together."""
    shares = FairShares(ShareLimits(endpoints_per_agent=2))
    table = TunnelTable(range(100, 101), shares)
    old = table.add_endpoint(A, "nas", 22, None)
    new = table.add_endpoint(A, "nas", 22, None)
    assert shares.counts.count(Share.ENDPOINTS_PER_AGENT, "a") == 1
    assert not table.remove(old)
    table.add_endpoint(A, "dns", 53, None, kind=UDP_ENDPOINT)
    with pytest.raises(Refused, match="too many endpoints") as refused:
        table.add_endpoint(A, "web", 80, None)
    assert refused.value.cause == "too_many_endpoints"
    assert table.remove(new)
    table.add_endpoint(A, "web", 80, None)
