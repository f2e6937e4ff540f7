"""The buckets of one relay: one per paying agent, and what a grant wakes.

Invariants:
- One bucket per client agent that registers a tunnel here (or that an operator
  grants bytes to), kept across reconnects; reading creates none (`get`).
  `forget_unused` drops a bucket whose agent holds no tunnel, no stream and no
  bytes here, so the relay keeps buckets only for agents it serves.
- A grant reaches a bucket only through `grant`, which wakes the meters it
  handed bytes to and checks the low-water mark once.
- The quota agent is nudged once per crossing of the low-water mark
  (quota.core.streams.GrantWatch decides), not once per chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Protocol, cast

import structlog

from quota.core.bucket import Bucket, Meter
from quota.core.streams import GrantWatch
from relay.config import RelayConfig
from relay.registry import Agent

log = structlog.get_logger("relay")


class Wakeable(Protocol):
    """A meter's owner: a leg that may flush the bytes a grant handed it."""

    def on_wake(self) -> None: ...


class Buckets(Mapping[str, Bucket]):
    """Buckets by agent id; the only place grants enter and wakes go out."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self._by_agent: dict[str, Bucket] = {}
        self._watch = GrantWatch()
        self.on_want: Callable[[str], None] | None = None  # the quota agent's nudge

    def __getitem__(self, agent_id: str) -> Bucket:
        return self._by_agent[agent_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_agent)

    def __len__(self) -> int:
        return len(self._by_agent)

    def bucket_for(self, agent: Agent) -> Bucket:
        bucket = self._by_agent.get(agent.agent_id)
        if bucket is None:
            bucket = Bucket(
                agent.agent_id,
                low_water=self.config.low_water,
                slice_bytes=self.config.slice_bytes,
            )
            bucket.inactive = not agent.active
            bucket.can_pay = self.config.billing is not None  # until billing says otherwise
            self._by_agent[agent.agent_id] = bucket
        return bucket

    def forget_unused(self, served: set[str]) -> list[str]:
        """Drop the buckets of agents not in `served` that hold no stream and no bytes."""
        gone = [
            agent_id
            for agent_id, b in self._by_agent.items()
            if agent_id not in served and b.meters == 0 and b.remaining == 0
        ]
        for agent_id in gone:
            del self._by_agent[agent_id]
            self._watch.forget(agent_id)
        return gone

    def dispatch(self, wakes: tuple[Meter, ...]) -> None:
        for meter in wakes:
            cast(Wakeable, meter.owner).on_wake()

    def check_low_water(self, bucket: Bucket) -> None:
        wants = bucket.wants_grant()  # on the byte path: `remaining` walks the meters
        want = self._watch.check(bucket.agent_id, wants, bucket.remaining if wants else 0)
        if want is not None:
            log.info("grant_wanted", agent_id=want.agent_id, remaining=want.remaining)
            if self.on_want is not None:
                self.on_want(want.agent_id)

    def grant(self, agent: Agent, nbytes: int) -> Bucket:
        """Add `nbytes` to `agent`'s bucket: waiting streams flush, then low water is checked."""
        bucket = self.bucket_for(agent)
        self.dispatch(bucket.grant(nbytes))
        self.check_low_water(bucket)
        log.info("granted", agent_id=agent.agent_id, bytes=nbytes, remaining=bucket.remaining)
        return bucket
