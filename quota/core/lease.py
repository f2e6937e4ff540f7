"""Traffic leases: how many bytes the billing API may promise relays for one agent.

A lease is one relay's share of an agent's traffic, kept as cumulative totals
(granted, used, returned) so that every report is a delta applied once.

Invariants:
- `outstanding` is never negative and is zero once `valid_until <= now`: an
  expired lease promises nothing.
- `capacity` is what the agent can pay for right now: its bucket and packages,
  plus (metered allowed, account not frozen) the bytes its balance buys at the
  metered rate after what other agents of the account already hold in leases
  beyond their own traffic (`reserved`).
- `grant_size` never lets the sum of all relays' outstanding leases exceed the
  capacity: `outstanding_all + grant <= capacity` whenever
  `outstanding_all <= capacity` held before, and a grant is never negative.
- An expired lease is written off (`expire`): its unused remainder counts as
  returned, so a relay that comes back cannot revive bytes already promised to
  another relay.
- Each total stays within `MAX_COUNTER` (2**62): a delta that would pass it
  is refused with `OverLimit`, never wrapped or saturated.
No I/O, no clock: `now` is a parameter (integer milliseconds).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from quota.core.errors import InvalidValue
from quota.core.money import MAX_COUNTER, Rate, checked_add, units_affordable


def _add(total: int, delta: int, what: str) -> int:
    return checked_add(total, delta, what=what, limit=MAX_COUNTER)


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseTotals:
    """One relay's lease for one agent as the billing API keeps it, in cumulative byte totals.

    The relay's own record of the same lease is `quota.core.sync.HeldLease`.
    """

    granted_total: int = 0
    used_total: int = 0
    returned_total: int = 0
    valid_until: int = 0

    def __post_init__(self) -> None:
        if min(self.granted_total, self.used_total, self.returned_total) < 0:
            raise InvalidValue("lease totals must not be negative")

    def remaining(self) -> int:
        """Bytes granted and neither used nor returned, ignoring validity."""
        return max(0, self.granted_total - self.used_total - self.returned_total)

    def outstanding(self, now: int) -> int:
        """Bytes this lease still promises at `now` (0 once expired)."""
        return self.remaining() if self.valid_until > now else 0

    def report(self, *, used: int, returned: int) -> LeaseTotals:
        """Add one report's deltas (bytes relayed, bytes given back)."""
        if used < 0 or returned < 0:
            raise InvalidValue("used and returned must not be negative")
        return dataclasses.replace(
            self,
            used_total=_add(self.used_total, used, "lease used_total"),
            returned_total=_add(self.returned_total, returned, "lease returned_total"),
        )

    def expire(self, now: int) -> LeaseTotals:
        """Write off the remainder of a lease that expired (no-op while valid)."""
        if self.valid_until > now:
            return self
        # remaining <= granted_total - returned_total: the sum stays within granted_total
        return dataclasses.replace(self, returned_total=self.returned_total + self.remaining())

    def extend(self, valid_until: int) -> LeaseTotals:
        return dataclasses.replace(self, valid_until=valid_until)

    def grant(self, nbytes: int) -> LeaseTotals:
        if nbytes < 0:
            raise InvalidValue("a grant must not be negative")
        total = _add(self.granted_total, nbytes, "lease granted_total")
        return dataclasses.replace(self, granted_total=total)


def after_report(
    totals: tuple[int, int, int, int], *, used: int, returned: int, now: int, valid_until: int
) -> tuple[int, int, int, int]:
    """`LeaseTotals(*totals).report(...).expire(now).extend(valid_until)`, as a plain tuple.

    (granted, used, returned, valid_until) in and out: what a report does to one
    lease, without building three objects (a report of 10,000 agents does it
    10,000 times). Refuses negative deltas and totals past `MAX_COUNTER` alike.
    """
    granted, used_total, returned_total, until = totals
    if used < 0 or returned < 0:
        raise InvalidValue("used and returned must not be negative")
    used_total = _add(used_total, used, "lease used_total")
    returned_total = _add(returned_total, returned, "lease returned_total")
    if until <= now:  # expired: the remainder is written off as returned
        returned_total += max(0, granted - used_total - returned_total)
    return granted, used_total, returned_total, valid_until


def metered_reserve(excess: int, rate: Rate) -> int:
    """Millicoins that `excess` leased bytes beyond an agent's traffic may cost (rounded up)."""
    if excess <= 0:
        return 0
    return -(-excess * rate.price // rate.per)


def capacity(
    *, traffic: int, metered: bool, balance: int, rate: Rate, carry: int, reserved: int = 0
) -> int:
    """Bytes the agent can pay for: traffic held, plus what the free balance buys if metered."""
    if min(traffic, balance, reserved) < 0:
        raise InvalidValue("traffic, balance and reserve must not be negative")
    if not metered:
        return traffic
    free = max(0, balance - reserved)
    return traffic + units_affordable(free, rate, carry)


def shortfall(*, want: int, capacity: int, outstanding: int) -> int:
    """Bytes missing for `want` to be granted in full (what an auto top-up should cover)."""
    return max(0, want - max(0, capacity - outstanding))


def grant_size(*, want: int, capacity: int, outstanding: int) -> int:
    """Bytes to add to one relay's lease: `want`, cut to the capacity nobody else holds."""
    if want < 0 or outstanding < 0:
        raise InvalidValue("want and outstanding must not be negative")
    return min(want, max(0, capacity - outstanding))
