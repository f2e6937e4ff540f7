"""The quota agent embedded in a relay: reports usage, holds leases, follows pushes.

Invariants:
- Counts go to the journal every interval, under a sequence number, before
  anything is sent: a relay killed with SIGKILL loses at most one interval of
  counts, and resends what was not acknowledged, under the same numbers.
- Reports are sent in sequence order, one at a time; a failure stops the round
  and the next try waits an exponential backoff with jitter. Counting goes on.
- A lease only grows a bucket by `granted_total - applied_total`, so a repeated,
  late or duplicated answer never grants twice.
- Every failure is a structured log line and a counter, never a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from quota.agent.client import BillingClient
from quota.agent.errors import BillingUnavailable, JournalError
from quota.agent.journal import Journal
from quota.contract import wire
from quota.core.relay_sync import Deltas, TimeCarry, want_bytes

log = structlog.get_logger("quota.agent")

# Pushes after which the relay re-reads the agent registry at once.
_REGISTRY_REASONS = frozenset(
    {"register", "revoke", "subscription", "renewal", "expiry", "lapse", "freeze", "unfreeze"}
)


class QuotaHost(Protocol):
    """What the quota agent needs from the relay it is embedded in."""

    def usage(self) -> dict[tuple[str, str], int]: ...  # (agent, tunnel) -> cumulative bytes
    def tunnel_time(self) -> dict[tuple[str, str], int]: ...  # (agent, tunnel) -> cumulative ms
    def needs(self) -> dict[str, int]: ...  # agent -> bytes short, for buckets wanting more
    def add_lease(self, agent_id: str, nbytes: int) -> None: ...
    def set_status(self, agent_id: str, active: bool) -> None: ...
    def take_back_idle(self, idle_ms: int) -> dict[str, int]: ...  # agent -> bytes given back
    def drop_lease(self, agent_id: str) -> int: ...  # an expired lease: unused bytes dropped
    def set_agents(self, agents: list[wire.RelayAgent]) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncSettings:
    interval_ms: int = 1000
    min_want: int = 10_000_000
    offline_policy: str = "pause"  # or "continue"
    offline_allowance: int = 0
    idle_return_ms: int = 300_000
    registry_refresh_ms: int = 30_000
    heartbeat_every: int = 10  # send an empty report every this many quiet intervals
    backoff_max_ms: int = 15_000


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
    ) -> None:
        self.host, self.journal, self.client, self.settings = host, journal, client, settings
        self.clock_ms = clock_ms
        self.counters: Counter[str] = Counter()
        self.online = False  # the last send succeeded
        self._offline = False  # the last send failed (unknown at start: neither)
        self._bytes, self._ms, self._secs = Deltas(), Deltas(), TimeCarry()
        self._applied: dict[str, int] = {}
        self._valid_until: dict[str, int] = {}
        self._pushed: set[str] = set()
        self._recent: dict[str, int] = {}
        self._offline_given: Counter[str] = Counter()
        self._nudge = asyncio.Event()
        self._refresh = asyncio.Event()
        self._failures = 0
        self._next_try_ms = 0
        self._quiet = 0

    # -- lifecycle ---------------------------------------------------------------

    async def restore(self) -> None:
        """Put back into the buckets what the leases of the previous run left unused."""
        for totals in (await self.journal.leases()).values():
            self._applied[totals.agent_id] = totals.applied_total
            if totals.remaining:
                self.host.add_lease(totals.agent_id, totals.remaining)
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
        self._next_try_ms = 0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.round(), timeout_ms / 1000)

    def nudge(self) -> None:
        """Sync now rather than at the next interval (a bucket ran low, a push came)."""
        self._nudge.set()

    # -- the sync round ------------------------------------------------------------

    async def _tick_loop(self) -> None:
        """Rounds on a fixed cadence (a slow round does not stretch it), and on nudges."""
        loop = asyncio.get_running_loop()
        every = self.settings.interval_ms / 1000
        due = loop.time() + every
        while True:
            await wait_event(self._nudge, max(0, int((due - loop.time()) * 1000)))
            now = loop.time()
            while due <= now:
                due += every
            await self.round()

    async def round(self) -> None:
        """One interval: drop expired leases, flush counts to the journal, send what waits."""
        try:
            await self.expire()
            await self.flush()
            await self.send()
        except JournalError as exc:
            self.counters["journal_errors"] += 1
            log.error("journal_error", error=str(exc))

    async def expire(self) -> None:
        """A lease not renewed by a sync before its end is the billing API's again: drop it."""
        now = self.clock_ms()
        for agent_id, until in list(self._valid_until.items()):
            if now < until:
                continue
            del self._valid_until[agent_id]
            dropped = self.host.drop_lease(agent_id)
            if dropped:
                await self.journal.drop(agent_id, dropped)
                self.counters["lease_bytes_expired"] += dropped
                log.warning("lease_expired", agent_id=agent_id, dropped=dropped)

    async def flush(self) -> int | None:
        """Write this interval's deltas and lease requests as one report; its number or None."""
        now = self.clock_ms()
        items: dict[tuple[str, str], list[int]] = {}
        used: Counter[str] = Counter()
        for key, total in self.host.usage().items():
            if d := self._bytes.delta(key, total):
                items.setdefault(key, [0, 0])[0] += d
                used[key[0]] += d
        for key, total_ms in self.host.tunnel_time().items():
            if s := self._secs.seconds(key, self._ms.delta(key, total_ms)):
                items.setdefault(key, [0, 0])[1] += s
        self._recent = dict(used)
        leases = self._lease_requests()
        returned = self.host.take_back_idle(self.settings.idle_return_ms) if self.online else {}
        for agent_id, nbytes in returned.items():
            leases.setdefault(agent_id, [0, 0])[1] += nbytes
        self._quiet = 0 if (items or leases) else self._quiet + 1
        if not items and not leases and self._quiet % self.settings.heartbeat_every:
            return None
        body = wire.dump(
            wire.SyncRequest(
                seq=0,
                items=[
                    wire.SyncItem(agent_id=a, tunnel_id=t, bytes=b, tunnel_seconds=s)
                    for (a, t), (b, s) in sorted(items.items())
                ],
                leases=[
                    wire.LeaseRequest(agent_id=a, want=w, returned=r)
                    for a, (w, r) in sorted(leases.items())
                ],
            )
        )
        seq = await self.journal.append(body, dict(used), returned, now)
        self.counters["reports_written"] += 1
        return seq

    def _lease_requests(self) -> dict[str, list[int]]:
        wants: dict[str, list[int]] = {}
        needs = self.host.needs()
        for agent_id, short in needs.items():
            recent = self._recent.get(agent_id, 0)
            wants[agent_id] = [
                want_bytes(short=short, recent=recent, floor=self.settings.min_want),
                0,
            ]
        for agent_id in self._pushed:  # ask for its state, and bytes if it waits
            wants.setdefault(agent_id, [0, 0])
        self._pushed.clear()
        if self._offline and self.settings.offline_policy == "continue":
            self._grant_offline(needs)
        return wants

    def _grant_offline(self, needs: dict[str, int]) -> None:
        for agent_id, short in needs.items():
            room = self.settings.offline_allowance - self._offline_given[agent_id]
            give = min(max(short, 1), room)
            if give > 0:
                self._offline_given[agent_id] += give
                self.host.add_lease(agent_id, give)
                self.counters["offline_bytes"] += give
                log.warning("offline_allowance_used", agent_id=agent_id, bytes=give)

    async def send(self) -> None:
        """Send waiting reports in order until one fails or none is left."""
        if self.clock_ms() < self._next_try_ms:
            return
        for seq, body in await self.journal.pending():
            try:
                answer = await self.client.sync(body)
                if answer.seq != seq:
                    raise BillingUnavailable(f"answer for seq {answer.seq}, expected {seq}")
            except BillingUnavailable as exc:
                self._failed(seq, exc)
                return
            applied = self._apply(answer)
            await self.journal.ack(seq, applied)
            self.counters["reports_acked"] += 1
            if answer.duplicate:
                self.counters["reports_duplicate"] += 1
        if not self.online:
            log.info("billing_online", after_failures=self._failures)
        self.online, self._offline, self._failures, self._next_try_ms = True, False, 0, 0
        self._offline_given.clear()

    def _failed(self, seq: int, exc: BillingUnavailable) -> None:
        self.counters["sync_failures"] += 1
        self._failures += 1
        cap = min(self.settings.backoff_max_ms, 250 * 2 ** min(self._failures, 10))
        delay = random.randint(cap // 2, cap)  # jitter: relays do not retry in step
        self._next_try_ms = self.clock_ms() + delay
        if self.online or self._failures == 1:
            log.warning("billing_unreachable", seq=seq, error=str(exc), retry_in_ms=delay)
        self.online, self._offline = False, True

    def _apply(self, answer: wire.SyncAnswer) -> dict[str, int]:
        applied: dict[str, int] = {}
        for lease in answer.leases:
            if lease.status == "unknown":
                continue
            before = self._applied.get(lease.agent_id, 0)
            if not answer.duplicate:
                self._valid_until[lease.agent_id] = lease.valid_until
            if lease.granted_total > before:
                self.host.add_lease(lease.agent_id, lease.granted_total - before)
                self._applied[lease.agent_id] = lease.granted_total
                applied[lease.agent_id] = lease.granted_total
            self.host.set_status(lease.agent_id, lease.status == "active")
        for note in answer.topups:
            log.info("auto_topup", agent_id=note.agent_id, package=note.package, count=note.count)
        return applied

    # -- push and registry ---------------------------------------------------------

    async def _push_loop(self) -> None:
        failures = 0
        while True:
            try:
                async for event in self.client.events():
                    failures = 0
                    self.counters["push_events"] += 1
                    self._on_push(event)
            except BillingUnavailable as exc:
                self.counters["push_failures"] += 1
                if failures == 0:
                    log.warning("push_channel_down", error=str(exc))
            failures += 1
            cap = min(self.settings.backoff_max_ms, 250 * 2 ** min(failures, 10))
            await asyncio.sleep(random.randint(cap // 2, cap) / 1000)

    def _on_push(self, event: wire.PushEvent) -> None:
        if event.type == "hello":
            self._refresh.set()
        else:
            self._pushed.update(event.agent_ids)
            if event.reason in _REGISTRY_REASONS:
                self._refresh.set()
        self.nudge()

    async def _registry_loop(self) -> None:
        while True:
            try:
                listing = await self.client.relay_agents()
            except BillingUnavailable as exc:
                self.counters["registry_failures"] += 1
                log.warning("registry_refresh_failed", error=str(exc))
            else:
                self.host.set_agents(listing.agents)
                await self.journal.save_agents([wire.dump(a) for a in listing.agents])
                self.counters["registry_refreshes"] += 1
            await wait_event(self._refresh, self.settings.registry_refresh_ms)
