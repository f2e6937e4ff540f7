"""Owners going inactive and active, and the grace timers that close their streams.

Invariants:
- An inactive owner's bucket passes nothing and every stream of it pauses, idle
  or not; after `inactive_grace_ms` without a change its streams close with
  reason "inactive". Active again before that: the timer is cancelled and
  streams that hold nothing resume.
- At most one grace timer per agent.
"""

from __future__ import annotations

import asyncio

import structlog

from relay.hub.buckets import Buckets
from relay.hub.live import LiveStreams
from relay.registry import Agent

log = structlog.get_logger("relay")


class OwnerActivity:
    def __init__(self, buckets: Buckets, live: LiveStreams, grace_ms: int) -> None:
        self.buckets = buckets
        self.live = live
        self.grace_ms = grace_ms
        self._grace: dict[str, asyncio.TimerHandle] = {}

    def set_active(self, agent: Agent, active: bool) -> None:
        agent_id = agent.agent_id
        handle = self._grace.pop(agent_id, None)
        if handle is not None:
            handle.cancel()
        self.buckets.dispatch(self.buckets.bucket_for(agent).set_inactive(not active))
        for stream in self.live.of_agent(agent_id):
            stream.owner_changed(active)
        if not active:
            self._grace[agent_id] = asyncio.get_running_loop().call_later(
                self.grace_ms / 1000, self._grace_expired, agent_id
            )
        log.info("agent_state", agent_id=agent_id, active=active)

    def _grace_expired(self, agent_id: str) -> None:
        self._grace.pop(agent_id, None)
        for stream in self.live.of_agent(agent_id):
            stream.close("inactive")
