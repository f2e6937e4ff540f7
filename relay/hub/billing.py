"""The relay's side of the billing sync: the hub seen as a `QuotaHost`.

Invariants:
- Usage is cumulative per (agent, tunnel) for this process: bytes of closed
  streams plus the meters of live ones, so the quota agent's deltas add up to
  each bucket's `used` exactly.
- Leases only ever add to a bucket through `Buckets.grant` (no admin view is
  built); statuses go through `OwnerActivity.set_active`, so paused streams
  wake and inactive ones pause the usual way.
- Only buckets of client agents served here are reported (`holdings`): an
  answer or a registry refresh about another agent creates no bucket, and a
  bucket whose agent left (no tunnel, no stream, nothing left) is dropped.
- A refreshed registry closes the connections of agents whose key was revoked
  (their streams close with reason "revoked") and keeps everyone else's.
"""

from __future__ import annotations

from typing import Any

import structlog

from quota.contract import wire
from quota.core.relay_sync import Holding
from relay.hub.hub import Hub
from relay.registry import Agent, Role, key_blob

log = structlog.get_logger("relay.billing")


def to_agent(remote: wire.RelayAgent) -> Agent:
    blobs = frozenset(b for b in (key_blob(k) for k in remote.public_keys) if b is not None)
    return Agent(
        agent_id=remote.id,
        account=remote.account_id,
        role=Role(remote.role),
        keys=blobs,
        active=remote.status == "active",
    )


class BillingLink:
    """Implements quota.agent.sync.QuotaHost over a hub."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def usage(self) -> dict[tuple[str, str], int]:
        return self.hub.live.usage()

    def tunnel_time(self) -> dict[tuple[str, str], int]:
        return self.hub.live.tunnel_time(self.hub.tunnels.all(), self.hub.now_ms())

    def holdings(self) -> dict[str, Holding]:
        """The buckets of client agents served here; a bucket nobody needs any more is dropped."""
        served = {t.agent.agent_id for t in self.hub.tunnels.all()}
        self.hub.buckets.forget_unused(served)
        return {
            agent_id: Holding(
                remaining=bucket.remaining,
                short=0 if bucket.inactive else bucket.short,  # no lease helps it now
                streams=bucket.meters,
                tunnels=agent_id in served,
                can_pay=bucket.can_pay and not bucket.inactive,
            )
            for agent_id, bucket in self.hub.buckets.items()
        }

    def add_lease(self, agent_id: str, nbytes: int) -> None:
        agent = self.hub.registry.get(agent_id)
        if nbytes > 0 and agent is not None:
            self.hub.buckets.grant(agent, nbytes)

    def set_status(self, agent_id: str, active: bool) -> None:
        agent = self.hub.registry.get(agent_id)
        bucket = self.hub.buckets.get(agent_id)
        if agent is None or bucket is None:  # not served here: nothing to change
            return
        if bucket.inactive == active:  # a change
            self.hub.activity.set_active(agent, active)

    def lease_answered(self, agent_id: str, exhausted: bool) -> None:
        """Billing gave less than asked (nothing more to come) or all of it: why streams wait."""
        bucket = self.hub.buckets.get(agent_id)
        if bucket is None or bucket.can_pay is not exhausted:
            return
        bucket.can_pay = not exhausted
        for stream in self.hub.live.of_agent(agent_id):
            stream.bucket_changed()

    def take_back(self, agent_id: str, nbytes: int) -> int:
        """Take back up to `nbytes` unused bytes of `agent_id`'s bucket; how many."""
        bucket = self.hub.buckets.get(agent_id)
        return 0 if bucket is None else bucket.revoke(nbytes)

    def set_low_water(self, agent_id: str, nbytes: int) -> None:
        bucket = self.hub.buckets.get(agent_id)
        if bucket is not None:
            bucket.low_water = nbytes

    def drop_lease(self, agent_id: str) -> int:
        bucket = self.hub.buckets.get(agent_id)
        return 0 if bucket is None else bucket.revoke(bucket.remaining)

    def set_agents(self, agents: list[wire.RelayAgent]) -> None:
        fresh = [to_agent(a) for a in agents]
        self.hub.registry.replace(fresh)
        for agent in fresh:
            bucket = self.hub.buckets.get(agent.agent_id)
            if bucket is not None and bucket.inactive == agent.active:
                self.hub.activity.set_active(agent, agent.active)
        self._close_revoked()

    def _close_revoked(self) -> None:
        for server in list(self.hub.connections):
            agent: Agent | None = server.agent
            blob: bytes | None = server.key_blob
            if agent is None or blob is None:
                continue
            if self.hub.registry.authenticate(agent.agent_id, blob) is not None:
                continue
            log.warning("agent_key_revoked", agent_id=agent.agent_id)
            self._close_connection(server, agent)

    def _close_connection(self, server: Any, agent: Agent) -> None:
        for stream in list(self.hub.live.values()):
            if stream.tunnel.conn is server.conn or stream.peer_desc.startswith(
                f"support:{agent.agent_id}@"
            ):
                stream.close("revoked")
        server.conn.close()
