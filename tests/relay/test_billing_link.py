"""The hub seen by the quota agent: leases in, usage out, idle leases given back."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import asyncssh
import pytest

from quota.contract import wire
from quota.core.bucket import Bucket
from quota.core.relay_sync import Holding
from relay.config import load_config
from relay.hub.billing import BillingLink, to_agent
from relay.hub.control import Control
from relay.hub.hub import Hub
from relay.hub.stream import Stream
from relay.registry import Registry, Role


def _remote(agent_id: str, role: str = "client", status: str = "active") -> wire.RelayAgent:
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    return wire.RelayAgent(
        id=agent_id, account_id="acc_1", name=agent_id, role=role, status=status,
        public_keys=[key, "not a key"],
    )  # fmt: skip


def _bucket(hub: Hub) -> Bucket:
    agent = hub.registry.get("agt_a")
    assert agent is not None
    return hub.bucket_for(agent)


def _link() -> tuple[Hub, BillingLink]:
    hub = Hub(load_config(None), Registry(None), None)
    link = BillingLink(hub)
    link.set_agents([_remote("agt_a"), _remote("agt_s", role="support")])
    return hub, link


def test_remote_agents_become_registry_entries() -> None:
    """Billing agents map to relay agents; unparsable keys are skipped, not fatal."""
    agent = to_agent(_remote("agt_x", role="dual", status="inactive"))
    assert (agent.account, agent.role, agent.active, len(agent.keys)) == (
        "acc_1",
        Role.DUAL,
        False,
        1,
    )


def test_leases_fill_buckets_and_holdings_describe_them() -> None:
    """A lease grows the bucket; holdings report remaining, waiting bytes, streams and tunnels."""
    hub, link = _link()
    _bucket(hub)
    link.add_lease("agt_a", 5_000_000)
    link.add_lease("agt_unknown", 10)  # not in the registry: ignored
    assert hub.buckets["agt_a"].granted == 5_000_000 and "agt_unknown" not in hub.buckets
    assert link.holdings() == {
        "agt_a": Holding(remaining=5_000_000, short=0, streams=0, tunnels=False)
    }
    link.set_low_water("agt_a", 123)
    assert hub.buckets["agt_a"].low_water == 123


def test_a_bucket_nobody_needs_is_dropped_and_answers_create_none() -> None:
    """No tunnel, stream or bytes: the bucket goes; a status for an unserved agent adds none."""
    hub, link = _link()
    _bucket(hub)
    link.add_lease("agt_a", 7_000)
    assert link.take_back("agt_a", 10_000) == 7_000
    assert hub.buckets["agt_a"].remaining == 0
    assert link.holdings() == {} and "agt_a" not in hub.buckets
    link.set_status("agt_a", False)
    link.set_status("agt_s", True)
    assert len(hub.buckets) == 0


async def test_status_from_billing_pauses_and_refuses() -> None:
    """An agent the billing API calls inactive has an inactive bucket; active again undoes it."""
    hub, link = _link()
    bucket = _bucket(hub)
    link.set_status("agt_a", False)
    assert bucket.inactive
    link.set_agents([_remote("agt_a")])
    assert not bucket.inactive


def test_a_lease_builds_no_admin_view(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lease from billing grants and wakes without walking the live streams."""
    hub, link = _link()
    _bucket(hub)

    def walked() -> None:
        raise AssertionError("add_lease walked the live streams")

    monkeypatch.setattr(hub.live, "values", walked)
    link.add_lease("agt_a", 7_000)
    assert hub.buckets["agt_a"].granted == 7_000


def test_admin_reads_create_no_bucket() -> None:
    """`relay agents` and an agent's view read every agent and create nothing: empty views."""
    hub, _ = _link()
    control = Control(hub)
    views = {v["agent_id"]: v for v in control.agents()}
    assert views["agt_a"]["state"] == "depleted" and views["agt_a"]["granted"] == 0
    assert views["agt_s"]["remaining"] == 0
    assert control.revoke("agt_a", 10)["granted"] == 0
    assert len(hub.buckets) == 0
    assert control.grant("agt_a", 10)["granted"] == 10  # an operator's grant makes one
    assert list(hub.buckets) == ["agt_a"]


def test_the_last_tunnel_leaving_starts_a_round_but_not_while_closing() -> None:
    """An agent leaving with bytes held nudges the sync (its lease goes back); closing does not."""
    hub, _ = _link()
    agent = hub.registry.get("agt_a")
    assert agent is not None
    nudged: list[str] = []
    hub.buckets.on_want = nudged.append
    for closing in (False, True):
        first = hub.tunnels.add_endpoint(agent, "nas", 22, conn=None)
        second = hub.tunnels.add_endpoint(agent, "cam", 22, conn=None)
        hub.buckets.grant(agent, 1000)
        nudged.clear()
        hub.remove_tunnel(first)
        assert nudged == []  # it still holds a tunnel here
        if closing:
            hub.close_all("relay_shutdown")
        else:
            hub.remove_tunnel(second)
        assert nudged == ([] if closing else ["agt_a"])


class _Stream:
    """A live stream as the admin view reads it (hashable, as the tunnel's set needs)."""

    stream_id: str
    tunnel: SimpleNamespace


def test_admin_view_counts_streams_after_a_registry_refresh() -> None:
    """`relay agents` counts an agent's live stream after the registry built new Agent objects."""
    hub, link = _link()
    agent = hub.registry.get("agt_a")
    stream = _Stream()
    stream.stream_id, stream.tunnel = "s-1", SimpleNamespace(agent=agent, streams=set())
    hub.live.opened(cast(Stream, stream))
    link.set_agents([_remote("agt_a"), _remote("agt_s", role="support")])  # a refresh
    assert hub.registry.get("agt_a") is not agent
    views = {view["agent_id"]: view["streams"] for view in Control(hub).agents()}
    assert views == {"agt_a": 1, "agt_s": 0}
