"""The hub: the parts of one relay's shared state, assembled, and the host of its streams.

It decides nothing itself: quota.core decides (buckets, stream machines), the
parts keep state (`buckets`, `tunnels`, `live`, `recorder`, `activity`) and the
TCP, UDP and SSH parts own the sockets. The hub is what they all hold.

Invariants:
- A refusal opens nothing, is logged once and its message is shown to the agent.
  A fair share's refusal (relay.hub.shares) also writes one `refused` record;
  its log line is written at most once per agent and cause every
  SHARE_LOG_EVERY_MS, counting the ones left out.
- Fair shares a stream took are given back when it closes, exactly once.
- Every stream that opens is closed exactly once, and logged open and closed.
- Every task the relay starts for a stream is owned here and cancelled at shutdown.
- An agent whose last tunnel here goes while its bucket holds bytes starts a
  sync round at once, which gives its lease back (it moved to another relay).
- A client agent's new tunnel, while its bucket holds no byte and its account
  can pay, starts a sync round at once and its reply waits for that round
  (`lease_ready`, one sync interval or 2 s at most): the round asks the lease the
  tunnel primes (quota.core.relay_sync), so the first stream finds it there.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

import structlog

from quota.core.bucket import Bucket, Meter
from quota.core.stream import PauseReason
from quota.core.streams import Interim
from relay.config import RelayConfig
from relay.descriptors import descriptor_limit
from relay.errors import Refused
from relay.hub.activity import OwnerActivity
from relay.hub.buckets import Buckets
from relay.hub.figures import StreamBook
from relay.hub.gate import Gate
from relay.hub.live import LiveStreams
from relay.hub.recorder import Attempt, StreamRecorder
from relay.hub.shares import FairShares
from relay.hub.stream import Stream
from relay.hub.tunnels import Tunnel, TunnelTable
from relay.registry import Agent, Registry
from relay.streamlog.writer import StreamLog

log = structlog.get_logger("relay")

SHARE_LOG_EVERY_MS = 10_000  # a fair share's refusals: one log line per agent and cause


class Reacher(Protocol):
    """Endpoints held by the relay's other workers (relay.workers.reach)."""

    def wants(self, agent: Agent, host: str, port: int) -> bool: ...
    def reach(
        self, agent: Agent, host: str, port: int, orig: tuple[str, int]
    ) -> Coroutine[Any, Any, Any]: ...


class Hub:
    def __init__(
        self, config: RelayConfig, registry: Registry, streamlog: StreamLog | None
    ) -> None:
        self.config = config
        self.registry = registry
        self.buckets = Buckets(config)
        self.shares = FairShares(config.shares)
        self.tunnels = TunnelTable(config.public_ports, self.shares)
        self.live = LiveStreams()
        self.recorder = StreamRecorder(config.relay_id, streamlog)
        self.activity = OwnerActivity(self.buckets, self.live, config.inactive_grace_ms)
        self.started_ms = self.now_ms()
        self._ids = itertools.count(1)
        self.serial_tag = ""  # a worker's own ("w2."), so stream ids stay unique in the relay
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections: set[Any] = set()  # logged-in agents' SSH front objects
        self.quota_counters: dict[str, int] = {}  # the quota agent's, for the status view
        self._share_log: dict[tuple[str, str], tuple[int, int]] = {}  # -> (logged at, since)
        # read by metrics at scrape time; bumped per pause or refusal, never per chunk
        self.pauses: Counter[PauseReason] = Counter()
        self.refusals: Counter[str] = Counter()  # cause -> count
        self.gate = Gate(config.gate.admission(descriptor_limit()))  # before login
        self.remote: Reacher | None = None  # a worker's reach into the others (relay.workers)
        self.closing = False  # close_all was called: the relay is stopping
        # the quota agent's `next_round`: a round at once, awaited (None: no billing here)
        self.lease_round: Callable[[], Awaitable[None]] | None = None
        # the stream figures the quota agent journals with each report (billing and a log)
        self.book: StreamBook | None = None
        if streamlog is not None and config.billing is not None:
            self.book = StreamBook(self.stream_id(""), self.live, streamlog, self.now_ms)

    @staticmethod
    def now_ms() -> int:
        return time.time_ns() // 1_000_000

    def bucket_for(self, agent: Agent) -> Bucket:
        return self.buckets.bucket_for(agent)

    def stream_id(self, serial: str | None = None) -> str:
        """A relay-unique stream id; UDP flows pass their own serial ("u7")."""
        serial = serial if serial is not None else str(next(self._ids))
        return f"{self.config.relay_id}-{self.started_ms:x}-{self.serial_tag}{serial}"

    # -- StreamHost: what every stream calls -------------------------------------------

    def stream_opened(self, stream: Stream) -> None:
        self.live.opened(stream)

    def stream_closed(self, stream: Stream) -> None:
        self.live.closed(stream)
        if self.book is not None:
            self.book.closed(stream)
        held, stream.held = stream.held, ()
        for one in reversed(held):
            self.shares.release(one)

    def record(self, stream: Stream, event: str) -> None:
        self.recorder.record(stream, event, self.now_ms())

    def count_pause(self, reason: PauseReason) -> None:
        self.pauses[reason] += 1

    def dispatch(self, wakes: tuple[Meter, ...]) -> None:
        self.buckets.dispatch(wakes)

    def check_low_water(self, bucket: Bucket) -> None:
        self.buckets.check_low_water(bucket)

    # -- tunnels ------------------------------------------------------------------------

    def refuse(
        self,
        conn: Any,
        agent: Agent | None,
        what: str,
        refusal: Refused | str,
        attempt: Attempt | None = None,
    ) -> None:
        """Log a refusal, show it to the agent; a fair share's also goes to the stream log."""
        cause = refusal.cause if isinstance(refusal, Refused) else None
        message = str(refusal)
        kind = "tunnel_request" if what.startswith("-R") else "channel_open"
        self.refusals[cause or kind] += 1
        suppressed = self._unlogged(agent, cause)
        if suppressed is not None:
            log.warning(
                "refused",
                agent_id=agent.agent_id if agent else None,
                what=what,
                reason=message,
                cause=cause,
                suppressed=suppressed,
            )
        if conn is not None:
            conn.send_debug(f"quotarelay: {message}", always_display=True)
        if cause is not None and agent is not None and attempt is not None:
            self.refused(cause, agent, attempt)

    def _unlogged(self, agent: Agent | None, cause: str | None) -> int | None:
        """Like refusals not logged since the last logged one; None: do not log this one.

        A fair share's refusals are logged at most once per agent and cause every
        SHARE_LOG_EVERY_MS (each still has its stream-log record), so a flood of
        them cannot flood the log.
        """
        if agent is None or cause is None:
            return 0
        key, now = (agent.agent_id, cause), self.now_ms()
        last, held = self._share_log.get(key, (None, 0))
        if last is not None and 0 <= now - last < SHARE_LOG_EVERY_MS:
            self._share_log[key] = (last, held + 1)
            return None
        self._share_log[key] = (now, 0)
        return held

    def refused(self, cause: str, agent: Agent, attempt: Attempt) -> None:
        """Write the one `refused` record of a fair share's refusal."""
        stream_id = self.stream_id()
        self.recorder.refused(
            stream_id=stream_id, cause=cause, agent=agent, attempt=attempt, now_ms=self.now_ms()
        )

    def holds_tunnels(self, agent_id: str) -> bool:
        """Does `agent_id` hold a live tunnel on this relay?"""
        return any(t.agent.agent_id == agent_id for t in self.tunnels.all())

    def check_may_expose(self, agent: Agent) -> None:
        if not agent.role.may_expose:
            raise Refused(f"agent {agent.agent_id} is a support agent and cannot register tunnels")
        if self.bucket_for(agent).inactive:
            raise Refused(f"agent {agent.agent_id} is inactive (no active subscription)")

    async def lease_ready(self, agent: Agent) -> None:
        """`agent` opened a tunnel: if its bucket is empty and it can pay, await a sync round."""
        bucket = self.buckets.get(agent.agent_id)
        if self.lease_round is None or bucket is None or bucket.remaining:
            return
        if bucket.can_pay and not bucket.inactive:
            await self.lease_round()

    def remove_tunnel(self, tunnel: Tunnel) -> None:
        if self.tunnels.remove(tunnel):
            self.live.tunnel_closed(tunnel, self.now_ms())
            log.info("tunnel_closed", tunnel_id=tunnel.tunnel_id)
            self._maybe_left(tunnel.agent.agent_id)
        if tunnel.server is not None:
            tunnel.server.close()

    def _maybe_left(self, agent_id: str) -> None:
        """The agent's last tunnel here went: sync now, so its lease follows it elsewhere."""
        bucket = self.buckets.get(agent_id)
        if self.closing or bucket is None or bucket.remaining == 0 or self.holds_tunnels(agent_id):
            return  # closing: the final round reports it, no round may race that one
        if self.buckets.on_want is not None:
            self.buckets.on_want(agent_id)

    # -- the relay's life -------------------------------------------------------------------

    def interim(self) -> None:
        now = self.now_ms()
        for stream in list(self.live.values()):
            stream.handle(Interim(now_ms=now))

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close_all(self, reason: str) -> None:
        self.closing = True
        for stream in list(self.live.values()):
            stream.close(reason)
        for tunnel in self.tunnels.all():
            self.remove_tunnel(tunnel)

    async def drain_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def interim_loop(hub: Hub, every_ms: int) -> None:
    """Write each live stream's interim record every `every_ms` (a task of one process's hub)."""
    while True:
        await asyncio.sleep(every_ms / 1000)
        hub.interim()
