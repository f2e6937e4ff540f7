"""A worker's side of its supervisor: records out, usage and figures reported, sub-leases in.

Invariants:
- Records go to the supervisor batched per loop turn, and all of them before
  each report (`RecordSink`), so a close record is in before the figures that
  settle it (relay.workers.figures).
- A report (`Usage`) is cumulative for this process: its usage, and with
  billing the stream figures behind it taken at the same instant.
- A bucket asks for more below its mark (`want_size`); an agent that left this
  worker asks for nothing and its bytes go back at once (`Feeder.tick`).
- A new tunnel's `-R` answer waits for the supervisor's sync round
  (`Feeder.lease_round`, relay.workers.rounds).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from quota.core.bucket import Bucket
from quota.core.sublease import want_size
from relay.hub.billing import BillingLink
from relay.hub.control import Control
from relay.hub.hub import Hub
from relay.registry import Agent
from relay.streamlog.record import StreamRecord
from relay.workers.link import Link
from relay.workers.messages import (
    Agents,
    Flush,
    GiveBack,
    Grant,
    LeaseAnswered,
    LeaseRound,
    Message,
    PauseStream,
    Recall,
    Records,
    RoundDone,
    SetActive,
    SetLowWater,
    ShareAnswer,
    Usage,
    Want,
)
from relay.workers.shares import RelayWideShares

USAGE_EVERY_MS = 100
# A sub-lease's headroom: a stream at loopback line rate (1-2 GB/s) passes 16 MiB in
# about 10 ms, more than the round trip to the supervisor under load; streams that
# still wait double it, up to the ceiling. The supervisor never hands out more than
# its pool, and recalls idle headroom when another worker's streams wait.
SUBLEASE_FLOOR = 16 * 1024 * 1024
SUBLEASE_CEILING = 256 * 1024 * 1024
# A new tunnel's answer waits for the relay's sync round (2 s at most there:
# quota.agent.sync.NEXT_ROUND_MAX_MS, not imported: it brings aiohttp), and no longer
# than this here, whatever the supervisor does.
ROUND_WAIT_S = 3.0


class RecordSink:
    """Stands in for the stream log: records go to the supervisor, batched per loop turn."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self._batch: list[StreamRecord] = []
        self._queued = 0

    @property
    def position(self) -> int:
        """Records queued so far (the worker's stream book notes where a close record is)."""
        return self._queued

    @property
    def durable(self) -> int:
        """All of them: once sent, the supervisor's book settles a stream, not the worker's."""
        return self._queued

    def record(self, rec: StreamRecord) -> None:
        if not self._batch:
            asyncio.get_running_loop().call_soon(self.flush)
        self._batch.append(rec)
        self._queued += 1

    def flush(self) -> None:
        if self._batch:
            batch, self._batch = self._batch, []
            self.link.send(Records(records=batch))


class Feeder:
    """The worker's side of the sub-leases: wants, usage, grants, recalls."""

    def __init__(self, hub: Hub, link: Link, sink: RecordSink) -> None:
        self.hub = hub
        self.link = link
        self.sink = sink
        self.billing = BillingLink(hub)  # the same paths the billing sync takes
        config = hub.config
        self.chunk = max(4 * config.slice_bytes, 2 * config.low_water, SUBLEASE_FLOOR)
        self.chunks: dict[str, int] = {}  # agent -> its chunk now (doubled after each wait)
        self._nudged = False
        self._holders: set[str] = set()  # agents with a tunnel here, as of the last tick
        self._opening: set[str] = set()  # agents opening a tunnel since the last tick
        self._rounds: dict[int, asyncio.Future[None]] = {}  # LeaseRound asks not answered yet
        self._round_ids = itertools.count(1)
        self._check = hub.buckets.check_low_water
        hub.buckets.check_low_water = self.check_low_water  # type: ignore[method-assign]
        self._may_expose = hub.check_may_expose
        hub.check_may_expose = self.check_may_expose  # type: ignore[method-assign]

    def nudge(self, _agent_id: str = "") -> None:
        if not self._nudged:
            self._nudged = True
            asyncio.get_running_loop().call_soon(self.tick)

    def low_mark(self, agent_id: str, bucket: Bucket) -> int:
        """Below this a worker asks for more: its low water, or half a chunk while in use.

        A bucket with a tunnel or a stream here keeps headroom of its own, so a
        datagram (which cannot wait) finds bytes without a round trip to the
        supervisor; the headroom goes back on a recall when another worker waits.
        """
        if agent_id in self._holders or bucket.meters:
            return max(bucket.low_water, self.chunks.get(agent_id, self.chunk) // 2)
        return bucket.low_water

    def check_low_water(self, bucket: Bucket) -> None:
        """The hub's low-water check, plus a nudge when the bucket is below its mark here."""
        self._check(bucket)
        if bucket.short or bucket.remaining < self.low_mark(bucket.agent_id, bucket):
            self.nudge()

    def check_may_expose(self, agent: Agent) -> None:
        """The hub's check before a tunnel opens; then headroom is asked for at once.

        Sent before the agent hears its tunnel is open, so the grant is on its way
        before the first byte or datagram (which cannot wait) arrives.
        """
        self._may_expose(agent)
        self._opening.add(agent.agent_id)  # not in the tunnel table until the check passed
        self.tick()

    async def lease_round(self) -> None:
        """A sync round of the relay, begun now and awaited: `Hub.lease_ready` in a worker.

        A report first, so the supervisor's round sees the new tunnel and primes its
        lease (relay.workers.rounds); the sub-lease arrives before the answer does.
        """
        self.report()
        req = next(self._round_ids)
        done = self._rounds[req] = asyncio.get_running_loop().create_future()
        self.link.send(LeaseRound(req=req))
        try:
            async with asyncio.timeout(ROUND_WAIT_S):  # the supervisor bounds it; so do we
                await done
        except TimeoutError:
            pass
        finally:
            self._rounds.pop(req, None)

    def tick(self) -> None:
        """Report use, then ask for what each bucket below its mark lacks.

        An agent with no tunnel, no stream and no want here (it left this worker)
        asks for nothing, and what it holds goes back to the relay at once: as in one
        process, whose lease goes back when the agent's last tunnel goes, the relay
        can return it to billing at its next round, or hand it to another worker.
        """
        self._nudged = False
        self.report()
        opening, self._opening = self._opening, set()
        self._holders = {t.agent.agent_id for t in self.hub.tunnels.all()} | opening
        for agent_id, bucket in self.hub.buckets.items():
            if bucket.inactive:
                continue
            if agent_id not in self._holders and not bucket.meters and not bucket.short:
                if bucket.remaining:
                    back = bucket.revoke(bucket.remaining)
                    self.link.send(GiveBack(agent_id=agent_id, nbytes=back, used_total=bucket.used))
                continue
            chunk = self.chunks.get(agent_id, self.chunk)
            if bucket.short:  # streams wait on this worker's sub-lease (or on the relay's)
                chunk = self.chunks[agent_id] = min(2 * chunk, SUBLEASE_CEILING)
            n = want_size(
                short=bucket.short,
                remaining=bucket.remaining,
                low_water=self.low_mark(agent_id, bucket),
                chunk=chunk,
            )
            if n:
                self.link.send(Want(agent_id=agent_id, nbytes=n, need=bucket.short))

    def report(self, seq: int = 0) -> None:
        """Usage, and the figures of the streams behind it, taken now; records go first."""
        self.sink.flush()  # a close record reaches the supervisor before the figures it settles
        hub, now = self.hub, self.hub.now_ms()
        admission = hub.gate.admission
        book, figures = hub.book, None
        if book is not None:
            figures = book.snapshot()
            book.written(figures)  # the link delivers in order, or the supervisor is gone
        self.link.send(
            Usage(
                used_total={a: b.used for a, b in hub.buckets.items()},
                tunnel_bytes=[(a, t, n) for (a, t), n in hub.live.usage().items()],
                tunnel_ms=[
                    (a, t, n) for (a, t), n in hub.live.tunnel_time(hub.tunnels.all(), now).items()
                ],
                tunnels=len(hub.tunnels),
                holding=sorted({t.agent.agent_id for t in hub.tunnels.all()}),
                connections={
                    "total": admission.total,
                    "unauthenticated": admission.unauthenticated,
                    "cap": admission.config.ordinary_cap,
                    "descriptor_limit": admission.config.descriptor_limit,
                    "auth_failures": hub.gate.auth_failures,
                },
                refused=dict(hub.gate.refusals) | dict(hub.refusals),
                directions=[(*k, n) for k, n in hub.live.bytes_by_direction().items()],
                pauses={r.value: n for r, n in hub.pauses.items()},
                logged_in=len(hub.connections),
                ssh_refused=dict(hub.refusals),
                seq=seq,
                live=_live(hub) if seq else [],
                run="" if book is None else book.run,
                figures=[] if figures is None else list(figures.rows),
            )
        )

    def handle(self, message: Message) -> None:
        hub = self.hub
        if isinstance(message, Grant):
            agent = hub.registry.get(message.agent_id)
            if agent is None:  # unknown here: give it straight back
                known = hub.buckets.get(message.agent_id)
                used = 0 if known is None else known.used
                nbytes = message.nbytes
                self.link.send(GiveBack(agent_id=message.agent_id, nbytes=nbytes, used_total=used))
                return
            hub.buckets.grant(agent, message.nbytes)
        elif isinstance(message, Recall):
            bucket = hub.buckets.get(message.agent_id)
            back = 0 if bucket is None else bucket.revoke(bucket.remaining)
            used = 0 if bucket is None else bucket.used
            self.link.send(GiveBack(agent_id=message.agent_id, nbytes=back, used_total=used))
        elif isinstance(message, SetActive):
            self.billing.set_status(message.agent_id, message.active)
        elif isinstance(message, Agents):
            self.billing.set_agents(message.agents)
        elif isinstance(message, SetLowWater):
            self.billing.set_low_water(message.agent_id, message.nbytes)
        elif isinstance(message, LeaseAnswered):
            self.billing.lease_answered(message.agent_id, message.exhausted)
        elif isinstance(message, PauseStream):
            stream = hub.live.get(message.stream_id)
            if stream is not None:
                stream.operator_pause(message.paused)
        elif isinstance(message, RoundDone):
            done = self._rounds.get(message.req)
            if done is not None and not done.done():
                done.set_result(None)
        elif isinstance(message, Flush):
            self.sink.flush()
            self.report(message.seq)
        elif isinstance(message, ShareAnswer) and isinstance(hub.shares, RelayWideShares):
            hub.shares.answered(message)


def _live(hub: Hub) -> list[dict[str, Any]]:
    return Control(hub).streams()
