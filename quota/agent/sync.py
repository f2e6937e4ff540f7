"""The quota agent embedded in a relay: the I/O shell around `quota.core.sync.SyncMachine`.

Every decision (what to report, under which number, which lease to apply, when
to retry, which lease expired, what a push means) is the machine's; this module
reads the relay (`QuotaHost`), writes the journal, calls the billing API and
sleeps until the time the machine says, with no `await` between a decision
and the effect it orders on the relay.

Invariants:
- Counts go to the journal every interval, under a sequence number, before
  anything is sent: a relay killed with SIGKILL loses at most one interval of
  counts, and resends what was not acknowledged, byte for byte, under the same
  numbers. The figures of the streams behind them (`StreamFigureSource`), taken
  at the same instant, go into the same journal write.
- A lease pushed with an event (a purchase while streams wait) is journaled,
  then put in its bucket at once, without waiting for a round; the round the
  push starts still reports and asks as usual.
- Reports are sent in sequence order, one at a time; a failure stops the round
  and the next try waits an exponential backoff with jitter. Counting goes on.
- No storage or billing error ends a loop: each is a structured log line and a
  counter, and the journal is retried after its own backoff.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Protocol

import structlog

from quota.agent.client import BillingClient, encode_report
from quota.agent.errors import BillingUnavailable, JournalError
from quota.agent.journal import Journal, StreamBatch
from quota.contract import wire
from quota.core.relay_sync import Holding
from quota.core.sync import Applied, Retry, SyncMachine, SyncSettings, next_due

__all__ = [
    "Holding",
    "QuotaAgent",
    "QuotaHost",
    "RoundTimes",
    "SyncSettings",
    "wait_event",
    "wall_ms",
]

log = structlog.get_logger("quota.agent")


class QuotaHost(Protocol):
    """What the quota agent needs from the relay it is embedded in."""

    def usage(self) -> dict[tuple[str, str], int]: ...  # (agent, tunnel) -> cumulative bytes
    def tunnel_time(self) -> dict[tuple[str, str], int]: ...  # (agent, tunnel) -> cumulative ms
    def holdings(self) -> dict[str, Holding]: ...  # agent -> its bucket, for agents served here
    def add_lease(self, agent_id: str, nbytes: int) -> None: ...
    def set_status(self, agent_id: str, active: bool) -> None: ...
    def lease_answered(self, agent_id: str, exhausted: bool) -> None: ...  # got less than asked?
    def take_back(self, agent_id: str, nbytes: int) -> int: ...  # unused bytes taken back
    def set_low_water(self, agent_id: str, nbytes: int) -> None: ...
    def drop_lease(self, agent_id: str) -> int: ...  # an expired lease: unused bytes dropped
    def set_agents(self, agents: list[wire.RelayAgent]) -> None: ...


class StreamFigureSource(Protocol):
    """The relay's streams, as the journal keeps their figures beside each report."""

    def snapshot(self) -> StreamBatch: ...  # figures changed since the last write, taken now
    def written(self, batch: StreamBatch) -> None: ...  # the journal holds `batch`


NEXT_ROUND_MAX_MS = 2000  # a new tunnel's answer waits no longer for the lease it primes
TRIPS_KEPT = 16  # leases are sized for the slowest of the last this many round trips
ROUND_BOUNDS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000)


class RoundTimes:
    """How long sync rounds took: counts per upper bound in ms (a histogram, read by metrics)."""

    def __init__(self, bounds_ms: tuple[int, ...] = ROUND_BOUNDS_MS) -> None:
        self.bounds_ms = bounds_ms
        self.counts = [0] * (len(bounds_ms) + 1)  # the last one: above every bound
        self.total_ms = 0

    def observe(self, ms: int) -> None:
        self.counts[bisect.bisect_left(self.bounds_ms, ms)] += 1
        self.total_ms += ms


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


async def wait_event(event: asyncio.Event, timeout_ms: int) -> None:
    """Wait until `event` is set or `timeout_ms` passed, then clear it."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_ms / 1000)
    event.clear()


class QuotaAgent:
    def __init__(
        self,
        host: QuotaHost,
        journal: Journal,
        client: BillingClient,
        settings: SyncSettings,
        clock_ms: Callable[[], int] = wall_ms,
        draw: Callable[[], float] = random.random,  # jitter: relays do not retry in step
        figures: StreamFigureSource | None = None,
    ) -> None:
        self.host, self.journal, self.client, self.settings = host, journal, client, settings
        self.figures = figures
        self.clock_ms = clock_ms
        self.machine = SyncMachine(settings, draw)
        self.counters: Counter[str] = Counter()
        self.round_times = RoundTimes()
        self._trips: deque[int] = deque(maxlen=TRIPS_KEPT)  # recent sync round trips, ms
        self._nudge = asyncio.Event()
        self._refresh = asyncio.Event()
        self._registry_ok = False  # the last registry call succeeded
        self._begun = self._ended = 0  # rounds begun and ended (numbered from 1)
        self._round_ended = asyncio.Condition()
        self._unannounced: int | None = None  # billing_online waits for the registry

    @property
    def online(self) -> bool:
        """The last send succeeded."""
        return self.machine.online

    @property
    def registry_ok(self) -> bool:
        """The last agent-registry call succeeded (logins can be checked)."""
        return self._registry_ok

    @property
    def offline(self) -> bool:
        """The last send failed (the billing API did not answer)."""
        return self.machine.offline

    # -- lifecycle ---------------------------------------------------------------

    async def _start(self) -> None:
        if not self.machine.started:
            self.machine.start(await self.journal.next_seq())

    async def restore(self) -> None:
        """Put back into the buckets what the leases of the previous run left unused."""
        await self._start()
        for agent_id, nbytes in self.machine.restore(await self.journal.leases()).items():
            self.host.add_lease(agent_id, nbytes)
        cached = await self.journal.load_agents()
        if cached is not None:
            self.host.set_agents([wire.parse(wire.RelayAgent, a) for a in cached])

    async def run(self) -> None:
        """The sync, push and registry loops; call `restore` first."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._tick_loop(), name="quota-sync")
            tg.create_task(self._push_loop(), name="quota-push")
            tg.create_task(self._registry_loop(), name="quota-registry")

    async def final_round(self, timeout_ms: int) -> None:
        """On shutdown: flush the last counts, and try once to send them."""
        self.retry_now()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.round(), timeout_ms / 1000)

    def nudge(self) -> None:
        """Sync now rather than at the next interval (a bucket ran low, a push came)."""
        self._nudge.set()

    def retry_now(self) -> None:
        """Forget the backoff waits: the next round writes and sends at once."""
        self.machine.retry_now()

    # -- the sync round ------------------------------------------------------------

    async def _tick_loop(self) -> None:
        """Rounds on a fixed cadence (a slow round does not stretch it), and on nudges."""
        loop = asyncio.get_running_loop()
        every = self.settings.interval_ms / 1000
        due = loop.time() + every
        while True:
            await wait_event(self._nudge, max(0, int((due - loop.time()) * 1000)))
            due = next_due(due, loop.time(), every)
            await self.round()

    async def round(self) -> None:
        """One interval: drop expired leases, flush counts to the journal, send what waits."""
        started = time.monotonic_ns()
        self._begun += 1
        number = self._begun
        try:
            await self._round()
        finally:
            took = (time.monotonic_ns() - started) // 1_000_000
            self.round_times.observe(took)
            if self.machine.online:  # a round that failed says nothing of the next good one
                self._trips.append(took)
            self._ended = max(self._ended, number)
            async with self._round_ended:
                self._round_ended.notify_all()

    async def next_round(self) -> None:
        """Start a round now; return once a round begun after this call ended.

        What a new tunnel waits for, so the lease it primes is in its bucket before
        its first stream (quota.core.relay_sync.LeaseBook.primes). At most one sync
        interval or NEXT_ROUND_MAX_MS, the shorter; not at all while the billing
        API does not answer (that round would fail too).
        """
        if self.machine.offline:
            return
        target = self._begun + 1
        self.nudge()
        with contextlib.suppress(TimeoutError):
            wait_ms = min(self.settings.interval_ms, NEXT_ROUND_MAX_MS)
            async with asyncio.timeout(wait_ms / 1000), self._round_ended:
                await self._round_ended.wait_for(lambda: self._ended >= target)

    async def _round(self) -> None:
        if not self.machine.journal_due(self.clock_ms()):
            return  # the journal failed lately: counting goes on, the deltas just grow
        try:
            await self.expire()
            await self.flush()
            await self.send()
        except JournalError as exc:
            self._journal_failed(exc)
        else:
            self.machine.journal_ok()

    def _journal_failed(self, exc: JournalError) -> None:
        self.counters["journal_errors"] += 1
        delay = self.machine.journal_failed(self.clock_ms())
        log.error("journal_error", error=str(exc), retry_in_ms=delay)

    async def expire(self) -> None:
        """A lease not renewed by a sync before its end is the billing API's again: drop it."""
        dropped = {a: self.host.drop_lease(a) for a in self.machine.expired(self.clock_ms())}
        dropped = {a: n for a, n in dropped.items() if n}
        for agent_id, nbytes in dropped.items():
            self.machine.dropped(agent_id, nbytes)
            self.counters["lease_bytes_expired"] += nbytes
            log.warning("lease_expired", agent_id=agent_id, dropped=nbytes)
        if dropped:
            await self.journal.drop(dropped)

    async def flush(self) -> int | None:
        """Write this interval's deltas and lease requests as one report; its number or None."""
        await self._start()
        now, host = self.clock_ms(), self.host
        usage, tunnel_time, holdings = host.usage(), host.tunnel_time(), host.holdings()
        streams = None if self.figures is None else self.figures.snapshot()  # same instant
        returned = {}
        for agent_id, nbytes in self.machine.returns(holdings, now).items():
            if back := host.take_back(agent_id, nbytes):
                returned[agent_id] = back
        step = self.machine.flush(
            usage=usage,
            tunnel_time=tunnel_time,
            holdings=holdings,
            returned=returned,
            now=now,
            round_ms=max(self._trips, default=0),
        )
        for agent_id, nbytes in step.low_water.items():
            host.set_low_water(agent_id, nbytes)
        for agent_id, nbytes in step.offline_grants.items():
            host.add_lease(agent_id, nbytes)
            self.counters["offline_bytes"] += nbytes
            log.warning("offline_allowance_used", agent_id=agent_id, bytes=nbytes)
        report = step.report
        if report is None:
            return None
        body = encode_report(report)
        try:
            await self.journal.append(
                report.seq, body, report.used, report.returned, now, streams=streams
            )
        except JournalError:
            self.machine.unwritten(report)  # its counts go into the next report
            raise
        self.machine.written(report)
        if streams is not None and self.figures is not None:
            self.figures.written(streams)
        self.counters["reports_written"] += 1
        return report.seq

    async def send(self) -> None:
        """Send waiting reports in order until one fails or none is left."""
        if not self.machine.may_send(self.clock_ms()):
            return
        for seq, body in await self.journal.pending():
            if not await self._send_one(seq, body):
                return
        after = self.machine.caught_up()
        if after is not None:
            self._unannounced = after
        self._announce_online()

    def _announce_online(self) -> None:
        """`billing_online` once a sync and the agent registry both answered."""
        if self._unannounced is not None and self._registry_ok:
            log.info("billing_online", after_failures=self._unannounced)
            self._unannounced = None

    async def _send_one(self, seq: int, body: bytes) -> bool:
        """Send one report and apply its answer; False if the round must stop."""
        try:
            answer = await self.client.sync(body)
        except BillingUnavailable as exc:
            self._failed(self.machine.failed(seq=seq, reason=str(exc), now=self.clock_ms()))
            return False
        step = self.machine.answered(seq=seq, answer=answer, now=self.clock_ms())
        if isinstance(step, Retry):
            self._failed(step)
            return False
        self._apply(step)
        for note in answer.topups:
            log.info("auto_topup", agent_id=note.agent_id, package=note.package, count=note.count)
        await self.journal.ack(seq, dict(step.applied))
        self.counters["reports_acked"] += 1
        if step.duplicate:
            self.counters["reports_duplicate"] += 1
        return True

    def _failed(self, retry: Retry) -> None:
        self.counters["sync_failures"] += 1
        if retry.announce:
            log.warning(
                "billing_unreachable", seq=retry.seq, error=retry.reason, retry_in_ms=retry.delay_ms
            )

    def _apply(self, applied: Applied) -> None:
        for agent_id, nbytes in applied.reclaim.items():  # before the grants: see SyncMachine
            if back := self.host.take_back(agent_id, nbytes):
                self.counters["offline_bytes_reclaimed"] += back
                log.info("offline_allowance_reclaimed", agent_id=agent_id, bytes=back)
            self.machine.unreclaimed(agent_id, nbytes - back)
        for update in applied.updates:
            if update.low_water:
                self.host.set_low_water(update.agent_id, update.low_water)
            if update.grant:
                self.host.add_lease(update.agent_id, update.grant)
            self.host.set_status(update.agent_id, update.active)
            if update.exhausted is not None:
                self.host.lease_answered(update.agent_id, update.exhausted)

    async def pushed(self, leases: list[wire.Lease]) -> None:
        """Leases pushed with an event: in the journal first, then in the buckets.

        A relay killed between the two finds them in the journal, and `restore`
        puts them back. A journal that fails is logged; the bytes go in anyway,
        as an answer's do when its acknowledgement cannot be written.
        """
        step = self.machine.pushed(leases=leases, now=self.clock_ms())
        if step is None or not step.updates:
            return
        try:
            await self.journal.applied(dict(step.applied))
        except JournalError as exc:
            self.counters["journal_errors"] += 1
            log.error("journal_error", error=str(exc))
        self._apply(step)
        self.counters["leases_pushed"] += len(step.updates)

    # -- push and registry ---------------------------------------------------------

    async def _push_loop(self) -> None:
        failures = 0
        while True:
            try:
                async for event in self.client.events():
                    failures = 0
                    self.counters["push_events"] += 1
                    if event.leases:  # granted on a purchase: no round needed to get them
                        await self.pushed(event.leases)
                    ids = event.agent_ids
                    if self.machine.push(kind=event.type, reason=event.reason, agent_ids=ids):
                        self._refresh.set()
                    self.nudge()
            except BillingUnavailable as exc:
                self.counters["push_failures"] += 1
                if failures == 0:
                    log.warning("push_channel_down", error=str(exc))
            failures += 1
            await asyncio.sleep(self.machine.backoff(failures) / 1000)

    async def _registry_loop(self) -> None:
        while True:
            try:
                listing = await self.client.relay_agents()
            except BillingUnavailable as exc:
                self.counters["registry_failures"] += 1
                if self._registry_ok and self._unannounced is None:
                    self._unannounced = 0  # announced before: announce the return too
                self._registry_ok = False
                log.warning("registry_refresh_failed", error=str(exc))
            else:
                # cached first: once the relay knows a listing, a restart finds it too
                try:
                    await self.journal.save_agents([wire.dump(a) for a in listing.agents])
                except JournalError as exc:  # the cache stays stale; the next refresh writes it
                    self.counters["journal_errors"] += 1
                    log.error("journal_error", error=str(exc))
                self.host.set_agents(listing.agents)
                self.counters["registry_refreshes"] += 1
                self._registry_ok = True
                if self.machine.online:
                    self._announce_online()
            await wait_event(self._refresh, self.settings.registry_refresh_ms)
