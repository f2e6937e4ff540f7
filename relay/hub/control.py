"""The admin API's view of the relay: `RelayControl` over a hub.

Invariants:
- Every call names a known agent or raises `UnknownAgent`; nothing changes then.
- Grants go through `Buckets.grant` and statuses through `OwnerActivity`, the
  same paths the billing sync takes; only the answer (an agent's view) is extra.
- Reads create nothing: an agent with no bucket here is shown as an empty one.
"""

from __future__ import annotations

import structlog

from quota.core.bucket import BucketState
from quota.core.stream import LOGGED_REASONS
from relay.errors import UnknownAgent, UnknownStream
from relay.hub.hub import Hub
from relay.hub.recorder import paused_by_reason
from relay.hub.stream import Stream
from relay.registry import Agent

log = structlog.get_logger("relay")


class Control:
    """Implements relay.admin.server.RelayControl."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def _agent(self, agent_id: str) -> Agent:
        agent = self.hub.registry.get(agent_id)
        if agent is None:
            raise UnknownAgent(agent_id)
        return agent

    def _view(self, agent: Agent) -> dict[str, object]:
        """An agent as the relay holds it; an agent without a bucket here reads as an empty one."""
        bucket = self.hub.buckets.get(agent.agent_id)
        if bucket is None:  # reading creates nothing: the empty bucket it would be
            state = BucketState.DEPLETED if agent.active else BucketState.INACTIVE
            granted = used = remaining = waiting = 0
        else:
            state, waiting = bucket.state, bucket.waiting
            granted, used, remaining = bucket.granted, bucket.used, bucket.remaining
        return {
            "agent_id": agent.agent_id,
            "account": agent.account,
            "role": agent.role.value,
            "state": agent.role.shown_state(state.value),
            "granted": granted,
            "used": used,
            "remaining": remaining,
            "streams": len(
                self.hub.live.of_agent(agent.agent_id)
            ),  # by id: a refresh makes new Agents
            "waiting": waiting,
        }

    def grant(self, agent_id: str, nbytes: int) -> dict[str, object]:
        agent = self._agent(agent_id)
        self.hub.buckets.grant(agent, nbytes)
        return self._view(agent)

    def revoke(self, agent_id: str, nbytes: int) -> dict[str, object]:
        agent = self._agent(agent_id)
        bucket = self.hub.buckets.get(agent.agent_id)
        back = 0 if bucket is None else bucket.revoke(nbytes)
        log.info("revoked", agent_id=agent_id, bytes=back)
        return self._view(agent)

    def set_active(self, agent_id: str, active: bool) -> dict[str, object]:
        agent = self._agent(agent_id)
        self.hub.activity.set_active(agent, active)
        return self._view(agent)

    def agents(self) -> list[dict[str, object]]:
        return [self._view(agent) for agent in self.hub.registry]

    def pause_stream(self, stream_id: str, paused: bool) -> dict[str, object]:
        """An operator pauses a live stream (reason OPERATOR), or lifts that pause."""
        stream = self.hub.live.get(stream_id)
        if stream is None:
            raise UnknownStream(stream_id)
        stream.operator_pause(paused)
        log.info("stream_operator_pause", stream_id=stream_id, paused=paused)
        return self._stream_view(stream, self.hub.now_ms())

    def streams(self) -> list[dict[str, object]]:
        now = self.hub.now_ms()
        return [self._stream_view(s, now) for s in self.hub.live.values()]

    @staticmethod
    def _stream_view(s: Stream, now: int) -> dict[str, object]:
        return {
            "stream_id": s.stream_id,
            "tunnel_id": s.tunnel.tunnel_id,
            "agent_id": s.tunnel.agent.agent_id,
            "kind": s.tunnel.kind,
            "peer": s.peer_desc,
            "target": s.tunnel.target,
            "state": s.state.value,
            "bytes_up": s.bytes_up,
            "bytes_down": s.bytes_down,
            "bytes_dropped": s.bytes_dropped,
            "pauses": s.clock.count,
            "paused_ms": s.clock.total_ms(now),
            "pause_reason": None if s.clock.reason is None else LOGGED_REASONS[s.clock.reason],
            **paused_by_reason(s.clock, now),
        }

    def status(self) -> dict[str, object]:
        hub = self.hub
        return {
            "relay_id": hub.config.relay_id,
            "uptime_ms": hub.now_ms() - hub.started_ms,
            "tunnels": len(hub.tunnels),
            "streams": len(hub.live),
            # as `relay agents` shows them: an agent with no bucket here reads as an empty one
            "depleted": sum(
                1 for a in hub.registry if self._view(a)["state"] == BucketState.DEPLETED.value
            ),
            "sync": dict(hub.quota_counters),
            "connections": self.connections(),
        }

    def connections(self) -> dict[str, object]:
        """Connections held, and refusals by reason: before login (the gate) and by fair share."""
        gate = self.hub.gate
        admission = gate.admission
        return {
            "total": admission.total,
            "unauthenticated": admission.unauthenticated,
            "cap": admission.config.ordinary_cap,
            "descriptor_limit": admission.config.descriptor_limit,
            "auth_failures": gate.auth_failures,
            "refused": gate.refusals | dict(self.hub.refusals),
        }
