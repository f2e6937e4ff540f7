"""Sync rounds a worker's new tunnel asks the supervisor for, so the lease it primes comes first.

In one process a client agent's new tunnel, while its bucket holds no byte,
starts a sync round and its `-R` is answered once that round ended
(relay.hub.hub.Hub.lease_ready). A worker holds no quota agent: it reports
(the report shows the tunnel), then asks the supervisor (`LeaseRound`), whose
quota agent runs the round (`QuotaAgent.next_round`) and primes the agent's
lease there (quota.core.relay_sync.LeaseBook.primes); the sub-lease the worker
wanted goes to it as soon as the lease is in.

Invariants:
- Each ask is answered once (`RoundDone`), after the round ended, on the same
  link as the grants of that round, so the worker has its bytes before the
  answer. Without a quota agent the answer is at once.
- The tasks that wait for rounds are owned here and cancelled by `close`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from relay.workers.link import Link
from relay.workers.messages import RoundDone


class RoundDesk:
    def __init__(self, links: Mapping[int, Link]) -> None:
        self.links = links
        self.lease_round: Callable[[], Awaitable[None]] | None = None  # the quota agent's
        self._tasks: set[asyncio.Task[None]] = set()

    def ask(self, key: int, req: int) -> None:
        """Worker `key` asks for a round now (its request `req`)."""
        task = asyncio.get_running_loop().create_task(self._round(key, req), name="lease-round")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _round(self, key: int, req: int) -> None:
        try:
            if self.lease_round is not None:
                await self.lease_round()
        finally:
            link = self.links.get(key)
            if link is not None:
                link.send(RoundDone(req=req))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
