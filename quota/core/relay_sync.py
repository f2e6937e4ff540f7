"""What a relay reports and asks for at each sync: pure decisions, no I/O.

Invariants:
- `Deltas` turns cumulative counters into deltas: the sum of the deltas it ever
  returned for a key equals that key's last cumulative value (nothing is
  reported twice, nothing lost); a counter that restarted from zero (a new
  process) is taken as new.
- `TimeCarry` turns milliseconds into whole seconds, carrying the remainder, so
  reported seconds never exceed the time elapsed and lose less than a second.
- `want_bytes` asks for enough to cover the agent's waiting streams plus two
  intervals of its recent rate, never less than the floor.
"""

from __future__ import annotations

from collections.abc import Hashable


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


def want_bytes(*, short: int, recent: int, floor: int) -> int:
    """Bytes to ask for: the waiting streams' shortfall plus two intervals of recent use."""
    return max(floor, short + 2 * recent)
