"""What a relay reports and asks for at each sync: pure decisions, no I/O.

Invariants:
- `Deltas` turns cumulative counters into deltas: the sum of the deltas it ever
  returned for a key equals that key's last cumulative value (nothing is
  reported twice, nothing lost); a counter that restarted from zero (a new
  process) is taken as new.
- `TimeCarry` turns milliseconds into whole seconds, carrying the remainder, so
  reported seconds never exceed the time elapsed and lose less than a second.
- Leases follow traffic (`LeaseRules`): a relay asks for an agent's lease only
  while one of its streams waits for bytes or its rate was measured (bytes
  moved since the previous report), never for an agent whose lease goes back
  in the same report; the ask tops the lease up to `target` (the measured rate
  over one sync interval plus two round trips, plus low water, within `floor`
  and `ceiling`) and adds what waiting streams lack. A lease goes back once
  its agent holds no tunnel on the relay and no stream, or has had no stream
  for `idle_return_ms`; never while a stream of it waits.
- A tunnel primes its agent's lease (`LeaseBook.primes`): an agent that comes
  to hold a tunnel on the relay, holds no bytes there and can pay (active, and
  billing's last answer gave all that was asked) is asked the floor once, so
  its first stream finds bytes waiting. Once a stay on the relay: a primed
  lease that goes back unused is not asked again until the agent's tunnels
  leave the relay and one comes back.
- Low water follows the rate: two round trips (at least a quarter interval) of
  the measured rate, at least the configured mark, so a funded stream's next
  lease is asked for in time. Before any rate is measured (a stream just
  started), it is three quarters of the first grant, and the rate is measured
  from that grant on (`LeaseBook`).
- All sizes are integers (bytes, ms, bytes per second): no float.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass


class Deltas:
    """Per-key cumulative counter -> delta since the previous call."""

    def __init__(self) -> None:
        self._marks: dict[Hashable, int] = {}

    def delta(self, key: Hashable, cumulative: int) -> int:
        mark = self._marks.get(key, 0)
        if cumulative < mark:  # the counter restarted: all of it is new
            mark = 0
        self._marks[key] = cumulative
        return cumulative - mark


class TimeCarry:
    """Per-key milliseconds -> whole seconds with the remainder carried."""

    def __init__(self) -> None:
        self._carry: dict[Hashable, int] = {}

    def seconds(self, key: Hashable, elapsed_ms: int) -> int:
        total = self._carry.get(key, 0) + max(0, elapsed_ms)
        self._carry[key] = total % 1000
        return total // 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class Holding:
    """One agent's bucket on this relay, as a sync round reads it."""

    remaining: int = 0  # granted bytes not used yet
    short: int = 0  # bytes its waiting streams lack (0: no stream waits)
    streams: int = 0  # streams drawing on it now
    tunnels: bool = True  # it holds a tunnel on this relay
    can_pay: bool = False  # active, and billing's last answer gave all that was asked


def rate_per_s(nbytes: int, elapsed_ms: int) -> int:
    """Bytes per second of `nbytes` moved in `elapsed_ms` (integer; 0 for nothing moved)."""
    return nbytes * 1000 // max(1, elapsed_ms) if nbytes > 0 else 0


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseRules:
    """How big a relay's lease of one agent should be, and when it goes back."""

    interval_ms: int = 1000  # the sync interval
    floor: int = 64_000_000  # the least a relay asks for
    ceiling: int = 1_000_000_000  # the most a relay holds for one agent from its rate
    low_water: int = 0  # the configured least low-water mark
    round_floor_ms: int = 100  # a round trip is never taken as shorter (a busy host's rounds)
    idle_return_ms: int = 300_000

    def _margin_ms(self, round_ms: int) -> int:
        """The time low water must last: two round trips, at least a quarter interval."""
        return max(2 * max(round_ms, self.round_floor_ms), self.interval_ms // 4)

    def target(self, rate: int, round_ms: int) -> int:
        """The lease to hold at `rate` bytes/s: one interval plus two round trips, plus low water.

        With low water on top, the round of the next interval comes before low water
        is crossed: a steady stream costs one round an interval, not two.
        """
        span = self.interval_ms + 2 * max(round_ms, self.round_floor_ms)
        held = rate * span // 1000 + self.low_water_at(rate, round_ms)
        return max(self.floor, min(self.ceiling, held))

    def low_water_at(self, rate: int, round_ms: int) -> int:
        """Below this many remaining bytes a sync round starts at once."""
        return max(self.low_water, min(self.ceiling, rate * self._margin_ms(round_ms) // 1000))

    def low_water_after(self, grant: int) -> int:
        """Low water after a grant made before any rate was measured: three quarters of it.

        The next round then comes as soon as a quarter is used, and measures the rate
        from the grant on, while three quarters still flow.
        """
        return max(self.low_water, min(self.ceiling, grant * 3 // 4))

    def want(self, held: Holding, rate: int, round_ms: int) -> int:
        """Bytes to ask for now (0: ask nothing): only for a waiting stream or a measured rate."""
        if held.short <= 0 and rate <= 0:
            return 0
        top_up = max(0, self.target(rate, round_ms) - held.remaining)
        if held.short <= 0 and top_up == 0:
            return 0
        return held.short + top_up

    def primes(self, held: Holding) -> bool:
        """Would a floor lease let this agent's first stream start at once?

        It holds a tunnel here and no byte, no stream of it waits (`want` asks then),
        and its account can pay.
        """
        return held.tunnels and held.can_pay and held.remaining <= 0 and held.short <= 0

    def gives_back(self, held: Holding, idle_ms: int) -> bool:
        """Does this lease go back now: no tunnel here, or idle for `idle_return_ms`?"""
        if held.remaining <= 0 or held.short > 0:
            return False
        if not held.tunnels and held.streams == 0:
            return True
        return held.streams == 0 and idle_ms >= self.idle_return_ms


def asks(
    rules: LeaseRules,
    holdings: Mapping[str, Holding],
    rates: Mapping[str, int],
    round_ms: int,
    returned: Mapping[str, int],
) -> dict[str, int]:
    """The lease asks of one report: agent -> bytes wanted, none for a lease going back."""
    wants = {}
    for agent_id, held in holdings.items():
        if agent_id in returned:
            continue
        want = rules.want(held, rates.get(agent_id, 0), round_ms)
        if want > 0:
            wants[agent_id] = want
    return wants


class LeaseBook:
    """What a relay's lease decisions remember between rounds, for every agent it serves.

    Rates measured at each flush, when each agent last had no stream (its idle
    clock), the offline bytes handed out in the current outage, and which agents
    a report still unanswered asks for. Every method is a decision; none does I/O.
    """

    def __init__(self, rules: LeaseRules, offline_allowance: int) -> None:
        self.rules, self.offline_allowance = rules, offline_allowance
        self.rates: dict[str, int] = {}  # agent -> bytes/s measured at the last flush
        self._last_flush: int | None = None
        self._flowing_since: dict[str, int] = {}  # agent -> when a first lease reached it
        self._idle_since: dict[str, int] = {}  # agent -> since when it has had no stream
        self._offline_given: Counter[str] = Counter()
        # agent -> offline bytes the first answer after an outage could neither pay for
        # nor take back (the bucket had used them): later grants pay them first
        self.debt: Counter[str] = Counter()
        # agent -> the report asking for it that no answer has reached yet: no second ask
        # meanwhile, or reports queued in an outage would each be granted when it ends
        self._unanswered: dict[str, int] = {}
        # agents whose stay on the relay (a tunnel here, since it last had none) was primed
        # or found served: none is primed twice in one stay
        self._primed: set[str] = set()

    def returns(self, holdings: Mapping[str, Holding], now: int) -> dict[str, int]:
        """Leases that go back now: agent -> bytes."""
        for agent_id, held in holdings.items():
            if held.streams or held.short:
                self._idle_since.pop(agent_id, None)
            else:
                self._idle_since.setdefault(agent_id, now)
        for agent_id in [a for a in self._idle_since if a not in holdings]:
            del self._idle_since[agent_id]
        return {
            agent_id: held.remaining
            for agent_id, held in holdings.items()
            if self.rules.gives_back(held, now - self._idle_since.get(agent_id, now))
        }

    def measure(self, moved: Mapping[str, int], now: int) -> None:
        """Bytes each agent moved since the last flush: its rate from now on."""
        self.rates = {a: rate_per_s(n, self._window(a, now)) for a, n in moved.items()}
        self._last_flush, self._flowing_since = now, {}

    def _window(self, agent_id: str, now: int) -> int:
        """The ms an agent's bytes since the last flush took: from its first lease, if later."""
        if self._last_flush is None:
            return self.rules.interval_ms
        start = max(self._last_flush, self._flowing_since.get(agent_id, 0))
        return now - start if now > start else self.rules.interval_ms

    def asks(
        self, holdings: Mapping[str, Holding], round_ms: int, going_back: Mapping[str, int]
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Agents that need bytes (agent -> want), and those of them a report may ask for."""
        needed = asks(self.rules, holdings, self.rates, round_ms, going_back)
        asked = {a: w for a, w in needed.items() if a not in self._unanswered}
        for agent_id, want in self.primes(holdings, needed, going_back).items():
            asked.setdefault(agent_id, want)
        return needed, asked

    def primes(
        self, holdings: Mapping[str, Holding], needed: Mapping[str, int], going_back: Iterable[str]
    ) -> dict[str, int]:
        """Agents a new stay on the relay primes: agent -> the floor, once a stay.

        An agent with bytes here, a measured rate, an ask of its own or a lease going
        back is served already: its stay counts as primed. Primes are asks only, never
        offline grants: a floor lease is worth a round, not an offline allowance.
        """
        back = set(going_back)
        self._primed &= {a for a, held in holdings.items() if held.tunnels}
        primed = {}
        for agent_id, held in holdings.items():
            if not held.tunnels or agent_id in self._primed:
                continue
            self._primed.add(agent_id)
            served = agent_id in needed or self.rates.get(agent_id, 0) > 0 or agent_id in back
            if self.rules.primes(held) and not served and agent_id not in self._unanswered:
                primed[agent_id] = self.rules.floor
        return primed

    def low_waters(self, holdings: Mapping[str, Holding], round_ms: int) -> dict[str, int]:
        return {a: self.rules.low_water_at(self.rates.get(a, 0), round_ms) for a in holdings}

    def offline_grants(self, needed: Iterable[str]) -> dict[str, int]:
        """Billing away, "continue": what is left of each needing agent's allowance, at once."""
        grants = {}
        for agent_id in needed:
            room = self.offline_allowance - self._offline_given[agent_id]
            if room > 0:
                self._offline_given[agent_id] += room
                grants[agent_id] = room
        return grants

    def written(self, seq: int, asked: Iterable[str]) -> None:
        """Report `seq` asking for `asked` is in the journal: none is asked again till answered."""
        for agent_id in asked:
            self._unanswered.setdefault(agent_id, seq)

    def answered(self, seq: int) -> Counter[str]:
        """Report `seq` was answered: the outage is over; the offline bytes still owed."""
        self._unanswered = {a: n for a, n in self._unanswered.items() if n > seq}
        owing, self._offline_given = self._offline_given, Counter()
        return owing

    def unreclaimed(self, agent_id: str, nbytes: int) -> None:
        """Of the offline bytes an answer took back, `nbytes` were already used: a debt."""
        if nbytes > 0:
            self.debt[agent_id] += nbytes

    def pay_debt(self, agent_id: str, grant: int) -> int:
        """What is left of `grant` once it paid the agent's debt (as much as it covers)."""
        owed = self.debt.get(agent_id, 0)
        if not owed:
            return grant
        paid = min(grant, owed)
        if owed == paid:
            del self.debt[agent_id]
        else:
            self.debt[agent_id] = owed - paid
        return grant - paid

    @property
    def owing(self) -> bool:
        """Offline bytes handed out in this outage wait for the first answer to net them out."""
        return any(self._offline_given.values())

    def granted(self, agent_id: str, nbytes: int, now: int) -> int:
        """`nbytes` reached the agent's bucket: its new low water (0: keep it).

        Before any rate was measured (a stream just started), low water is set at
        three quarters of the grant and the rate is measured from now on.
        """
        if not nbytes or self.rates.get(agent_id, 0):
            return 0
        self._flowing_since[agent_id] = now
        return self.rules.low_water_after(nbytes)

    def dropped(self, agent_id: str, nbytes: int) -> None:
        """An expired lease's `nbytes` were dropped: offline bytes among them are owed no more.

        A bucket is used lease first, so its unused bytes are offline ones first.
        """
        if owing := self._offline_given.get(agent_id, 0):
            self._offline_given[agent_id] = owing - min(owing, nbytes)
