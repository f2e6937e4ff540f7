"""The quota agent's sync decisions, pure: what to report, what to apply, when to retry.

The async shell (quota.agent.sync) reads the relay and the journal, calls the
billing API and carries out what this machine returns; it decides nothing.

Invariants:
- Reports are numbered here, from the journal's next number, before they are
  encoded. A number is spent only when the shell says its report was written
  (`written`); a report that could not be written is folded, whole, into the
  next one (`unwritten`). So every byte counted goes into exactly one written
  report, and one number never carries two bodies.
- A lease only grows a bucket by `granted_total - applied`, so a repeated, late
  or duplicated answer never grants twice; a duplicate answer does not extend
  a lease's validity.
- An answer whose seq is not the one sent is a failure. After a failure, no
  send before the backoff time; a success resets it. Journal failures back off
  on their own clock, and counting goes on meanwhile (deltas just grow).
- Leases follow traffic (quota.core.relay_sync.LeaseRules): an agent is asked
  for only while a stream of it waits or its rate was measured, never in the
  report that gives its lease back, nor while a report asking for it waits for
  its answer (reports queued in an outage ask once); leases go back only while
  the billing API answers (it must take them).
- A lease pushed with an event (`pushed`) is applied by the same rule as an
  answer's (`granted_total - applied`), while online and owing no offline bytes.
- Offline ("continue" policy, billing unreachable): an agent the relay would
  ask for gets what is left of `offline_allowance` at once, at most the
  allowance per outage. The first answer after the outage nets them out: its
  grants first pay those bytes back (`LeaseUpdate.grant` is what is left), and
  what they do not cover is taken back (`Applied.reclaim`). What could not be
  taken back (the streams had used it) is a debt the agent's later grants pay
  first (`unreclaimed`), answered or pushed. So the relay then holds what the
  billing API thinks it holds, and every byte relayed is reported.
No I/O, no clock: `now` (ms) is a parameter; jitter is drawn from `draw`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from quota.core.backoff import backoff_ms
from quota.core.errors import IllegalTransition
from quota.core.relay_sync import Deltas, Holding, LeaseBook, LeaseRules, TimeCarry

Key = tuple[str, str]  # (agent_id, tunnel_id)

# Push reasons after which the relay re-reads the agent registry at once.
REGISTRY_REASONS = frozenset(
    {"register", "revoke", "subscription", "renewal", "expiry", "lapse", "freeze", "unfreeze"}
)
_FIRST_BACKOFF_MS = 250


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncSettings:
    interval_ms: int = 1000
    min_want: int = 64_000_000  # the lease floor
    max_want: int = 1_000_000_000  # the lease ceiling (what a rate may ask for)
    low_water: int = 0  # the least low-water mark of a bucket
    offline_policy: str = "pause"  # or "continue"
    offline_allowance: int = 0
    idle_return_ms: int = 300_000
    registry_refresh_ms: int = 30_000
    heartbeat_every: int = 10  # send an empty report every this many quiet intervals
    backoff_max_ms: int = 15_000


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldLease:
    """The relay's record of one agent's lease, as its journal holds it (cumulative totals).

    The billing API's record of the same lease is `quota.core.lease.LeaseTotals`.
    """

    agent_id: str
    applied_total: int  # granted by the billing API and put in buckets
    used_total: int
    returned_total: int  # given back in reports, or dropped when it expired

    @property
    def remaining(self) -> int:
        return max(0, self.applied_total - self.used_total - self.returned_total)


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageLine:
    agent_id: str
    tunnel_id: str
    bytes: int
    tunnel_seconds: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseAsk:
    agent_id: str
    want: int
    returned: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """One numbered report: what to encode, and the lease totals it moves in the journal."""

    seq: int
    items: tuple[UsageLine, ...]
    leases: tuple[LeaseAsk, ...]
    used: Mapping[str, int]  # agent -> bytes in `items`
    returned: Mapping[str, int]  # agent -> idle lease bytes given back


@dataclass(frozen=True, slots=True, kw_only=True)
class Flush:
    report: Report | None  # None: a quiet interval, nothing to write
    offline_grants: Mapping[str, int]  # agent -> bytes to add to its bucket now
    low_water: Mapping[str, int]  # agent -> its bucket's low-water mark from now on


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseUpdate:
    agent_id: str
    grant: int  # bytes to add to the bucket (0: none)
    active: bool
    low_water: int = 0  # the bucket's low-water mark from now on (0: keep it)
    exhausted: bool | None = None  # asked for more and got less (None: nothing was asked)


@dataclass(frozen=True, slots=True, kw_only=True)
class Applied:
    seq: int
    updates: tuple[LeaseUpdate, ...]
    applied: Mapping[str, int]  # agent -> new applied total, for the journal
    duplicate: bool
    reclaim: Mapping[str, int]  # agent -> offline bytes to take back, those grants did not pay


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    seq: int
    reason: str
    delay_ms: int
    announce: bool  # the first failure after a success: worth a warning


class LeaseState(Protocol):
    """One lease of a sync answer, as far as the machine reads it."""

    @property
    def agent_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def granted_total(self) -> int: ...
    @property
    def valid_until(self) -> int: ...


class Answer(Protocol):
    """A sync answer, as far as the machine reads it."""

    @property
    def seq(self) -> int: ...
    @property
    def duplicate(self) -> bool: ...
    @property
    def leases(self) -> Sequence[LeaseState]: ...


def next_due(due: float, now: float, every: float) -> float:
    """The next tick of a fixed cadence: a slow round skips ticks rather than stretching it."""
    while due <= now:
        due += every
    return due


class SyncMachine:
    """The sync state of one relay; every method is a decision, none does I/O."""

    def __init__(self, settings: SyncSettings, draw: Callable[[], float]) -> None:
        self.settings, self._draw = settings, draw
        rules = LeaseRules(
            interval_ms=settings.interval_ms,
            floor=settings.min_want,
            ceiling=max(settings.min_want, settings.max_want),
            low_water=settings.low_water,
            idle_return_ms=settings.idle_return_ms,
        )
        self.leases = LeaseBook(rules, settings.offline_allowance)
        self.online = False  # the last send succeeded
        self.offline = False  # the last send failed (unknown at start: neither)
        self.failures = 0
        self._next_seq: int | None = None
        self._in_flight: Report | None = None
        self._bytes, self._ms, self._secs = Deltas(), Deltas(), TimeCarry()
        self._carry: dict[Key, list[int]] = {}
        self._carry_returned: Counter[str] = Counter()
        self._applied: dict[str, int] = {}
        self._valid_until: dict[str, int] = {}
        self._pushed: set[str] = set()
        self._quiet = 0
        self._next_try = 0
        self._journal_failures = 0
        self._journal_next_try = 0
        self._asked: dict[int, dict[str, int]] = {}  # seq -> agent -> bytes that report wants

    # -- start -------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._next_seq is not None

    def start(self, next_seq: int) -> None:
        """Number reports from `next_seq`, the journal's next unused number."""
        self._next_seq = next_seq

    def restore(self, leases: Mapping[str, HeldLease]) -> dict[str, int]:
        """Take the journal's lease totals; the unused bytes to put back into buckets."""
        back = {}
        for agent_id, held in leases.items():
            self._applied[agent_id] = held.applied_total
            if held.remaining:
                back[agent_id] = held.remaining
        return back

    # -- counting ----------------------------------------------------------------

    def returns(self, holdings: Mapping[str, Holding], now: int) -> dict[str, int]:
        """Leases to give back now: agent -> bytes (only while the billing API answers)."""
        back = self.leases.returns(holdings, now)
        return back if self.online else {}

    def flush(
        self,
        *,
        usage: Mapping[Key, int],
        tunnel_time: Mapping[Key, int],
        holdings: Mapping[str, Holding],
        returned: Mapping[str, int],
        now: int,
        round_ms: int = 0,
    ) -> Flush:
        """This interval's deltas and lease asks as one numbered report, or None if quiet.

        `returned` is what the relay took back of the leases `returns` named;
        `round_ms` the recent sync round trip, which sizes leases and low water.
        """
        if self._next_seq is None:
            raise IllegalTransition("flush before start: the next report number is unknown")
        if self._in_flight is not None:  # its write never finished: fold it in
            self.unwritten(self._in_flight)
        items, moved = self._deltas(usage, tunnel_time)
        self.leases.measure(moved, now)
        going_back = {**self._carry_returned, **returned}
        needed, asked = self.leases.asks(holdings, round_ms, going_back)
        offline = self._offline_grants(needed)
        wants: dict[str, list[int]] = {a: [w, 0] for a, w in asked.items()}
        for agent_id in self._pushed:  # ask for its state, and bytes if it waits
            wants.setdefault(agent_id, [0, 0])
        self._pushed.clear()
        self._carry_returned.update(returned)
        for agent_id, nbytes in self._carry_returned.items():
            wants.setdefault(agent_id, [0, 0])[1] += nbytes
        low = self.leases.low_waters(holdings, round_ms)
        self._quiet = 0 if (items or wants) else self._quiet + 1
        if not items and not wants and self._quiet % self.settings.heartbeat_every:
            return Flush(report=None, offline_grants=offline, low_water=low)
        report = self._report(self._next_seq, items, wants)
        self._carry, self._carry_returned, self._in_flight = {}, Counter(), report
        return Flush(report=report, offline_grants=offline, low_water=low)

    def _deltas(
        self, usage: Mapping[Key, int], tunnel_time: Mapping[Key, int]
    ) -> tuple[dict[Key, list[int]], dict[str, int]]:
        items = {key: list(pair) for key, pair in self._carry.items()}
        recent: Counter[str] = Counter()
        for key, total in usage.items():
            if d := self._bytes.delta(key, total):
                items.setdefault(key, [0, 0])[0] += d
                recent[key[0]] += d
        for key, total_ms in tunnel_time.items():
            if s := self._secs.seconds(key, self._ms.delta(key, total_ms)):
                items.setdefault(key, [0, 0])[1] += s
        return items, dict(recent)

    def _offline_grants(self, needed: Mapping[str, int]) -> dict[str, int]:
        if not (self.offline and self.settings.offline_policy == "continue"):
            return {}
        return self.leases.offline_grants(needed)

    @staticmethod
    def _report(seq: int, items: dict[Key, list[int]], wants: dict[str, list[int]]) -> Report:
        used: Counter[str] = Counter()
        for (agent_id, _), (nbytes, _) in items.items():
            used[agent_id] += nbytes
        return Report(
            seq=seq,
            items=tuple(
                UsageLine(agent_id=a, tunnel_id=t, bytes=b, tunnel_seconds=s)
                for (a, t), (b, s) in sorted(items.items())
            ),
            leases=tuple(
                LeaseAsk(agent_id=a, want=w, returned=r) for a, (w, r) in sorted(wants.items())
            ),
            used={a: n for a, n in used.items() if n},
            returned={a: r for a, (_, r) in wants.items() if r},
        )

    def written(self, report: Report) -> None:
        """The journal holds `report`: its number is spent."""
        if report is not self._in_flight:
            raise IllegalTransition(f"report {report.seq} is not the one being written")
        self._next_seq, self._in_flight = report.seq + 1, None
        self.leases.written(report.seq, [ask.agent_id for ask in report.leases if ask.want])
        self._asked[report.seq] = {a.agent_id: a.want for a in report.leases if a.want}

    def unwritten(self, report: Report) -> None:
        """The journal did not take `report`: its contents go into the next one, same number."""
        if report is not self._in_flight:
            raise IllegalTransition(f"report {report.seq} is not the one being written")
        self._in_flight = None
        for line in report.items:
            pair = self._carry.setdefault((line.agent_id, line.tunnel_id), [0, 0])
            pair[0] += line.bytes
            pair[1] += line.tunnel_seconds
        self._carry_returned.update(report.returned)
        self._pushed.update(ask.agent_id for ask in report.leases)

    # -- sending -----------------------------------------------------------------

    def may_send(self, now: int) -> bool:
        return now >= self._next_try

    def answered(self, *, seq: int, answer: Answer, now: int) -> Applied | Retry:
        """The billing API answered report `seq`: the leases to apply, or a retry."""
        if answer.seq != seq:
            return self.failed(
                seq=seq, reason=f"answer for seq {answer.seq}, expected {seq}", now=now
            )
        # The outage is over: bytes handed out offline are paid back from this answer's
        # grants, and what those do not cover is taken back from the buckets.
        owing = self.leases.answered(seq)
        updates, applied = [], {}
        asked = self._asked.pop(seq, {})
        for lease in answer.leases:
            if lease.status == "unknown":
                continue
            before = self._applied.get(lease.agent_id, 0)
            if not answer.duplicate:
                self._valid_until[lease.agent_id] = lease.valid_until
            grant = max(0, lease.granted_total - before)
            if grant:
                self._applied[lease.agent_id] = applied[lease.agent_id] = lease.granted_total
            left = self.leases.pay_debt(lease.agent_id, grant)
            owed = owing.get(lease.agent_id, 0)
            paid = min(left, owed)
            owing[lease.agent_id] = owed - paid
            low = self.leases.granted(lease.agent_id, left - paid, now)
            want = asked.get(lease.agent_id)
            updates.append(
                LeaseUpdate(
                    agent_id=lease.agent_id,
                    grant=left - paid,
                    active=lease.status == "active",
                    low_water=low,
                    exhausted=None if want is None else grant < want,
                )
            )
        reclaim = {a: n for a, n in owing.items() if n > 0}
        return Applied(
            seq=seq,
            updates=tuple(updates),
            applied=applied,
            duplicate=answer.duplicate,
            reclaim=reclaim,
        )

    def pushed(self, *, leases: Sequence[LeaseState], now: int) -> Applied | None:
        """Leases the billing API granted on its own and pushed (a purchase, streams waiting).

        Applied as an answer's are: only what a lease's `granted_total` adds to what
        this relay applied, so the next answer, carrying the same total, adds nothing.
        None (left to the next answer) unless online with no offline bytes owed:
        that answer nets them out first.
        """
        if not self.online or self.leases.owing:
            return None
        updates, applied = [], {}
        for lease in leases:
            grant = lease.granted_total - self._applied.get(lease.agent_id, 0)
            if lease.status == "unknown" or grant <= 0:
                continue
            self._applied[lease.agent_id] = applied[lease.agent_id] = lease.granted_total
            until = self._valid_until.get(lease.agent_id, 0)
            self._valid_until[lease.agent_id] = max(until, lease.valid_until)
            grant = self.leases.pay_debt(lease.agent_id, grant)
            updates.append(
                LeaseUpdate(
                    agent_id=lease.agent_id,
                    grant=grant,
                    active=lease.status == "active",
                    low_water=self.leases.granted(lease.agent_id, grant, now),
                )
            )
        return Applied(seq=0, updates=tuple(updates), applied=applied, duplicate=False, reclaim={})

    def unreclaimed(self, agent_id: str, nbytes: int) -> None:
        """Of an answer's `reclaim`, `nbytes` could not be taken back: later grants pay them."""
        self.leases.unreclaimed(agent_id, nbytes)

    def failed(self, *, seq: int, reason: str, now: int) -> Retry:
        """Report `seq` was not acknowledged: stop the round, retry after a backoff."""
        self.failures += 1
        delay = self.backoff(self.failures)
        self._next_try = now + delay
        announce = self.online or self.failures == 1
        self.online, self.offline = False, True
        return Retry(seq=seq, reason=reason, delay_ms=delay, announce=announce)

    def caught_up(self) -> int | None:
        """Every waiting report was acknowledged; the failures before, if it was offline."""
        after = None if self.online else self.failures
        self.online, self.offline, self.failures, self._next_try = True, False, 0, 0
        return after

    def backoff(self, failures: int) -> int:
        """The wait after `failures` failures in a row (sync, push channel or journal)."""
        return backoff_ms(
            failures,
            first_ms=_FIRST_BACKOFF_MS,
            cap_ms=self.settings.backoff_max_ms,
            draw=self._draw(),
        )

    # -- the journal, leases, pushes ------------------------------------------------

    def journal_due(self, now: int) -> bool:
        return now >= self._journal_next_try

    def journal_failed(self, now: int) -> int:
        """The journal failed a step: the wait before the next round touches it."""
        self._journal_failures += 1
        delay = self.backoff(self._journal_failures)
        self._journal_next_try = now + delay
        return delay

    def journal_ok(self) -> None:
        """A round went through the journal without an error: the backoff starts over."""
        self._journal_failures = 0

    def retry_now(self) -> None:
        """Forget the backoff waits (shutdown's last round, or an operator's nudge)."""
        self._next_try = self._journal_next_try = 0

    def expired(self, now: int) -> list[str]:
        """Agents whose lease was not renewed before its end: drop what is left of it."""
        gone = [a for a, until in self._valid_until.items() if now >= until]
        for agent_id in gone:
            del self._valid_until[agent_id]
        return gone

    def dropped(self, agent_id: str, nbytes: int) -> None:
        """An expired lease's `nbytes` were dropped (offline bytes among them, first)."""
        self.leases.dropped(agent_id, nbytes)

    def push(self, *, kind: str, reason: str, agent_ids: Sequence[str]) -> bool:
        """A push event: ask for these agents' state next report; True to re-read the registry."""
        if kind == "hello":
            return True
        self._pushed.update(agent_ids)
        return reason in REGISTRY_REASONS
