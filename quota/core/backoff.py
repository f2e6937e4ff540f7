"""Exponential backoff with jitter: the one rule for every retry wait in the project.

Invariants:
- The full wait doubles with each attempt from `first_ms` and never exceeds
  `cap_ms`; the wait returned lies in `[full - ceil(full * jitter), full]`.
- The random part comes in as `draw`, a number in [0, 1): the same inputs give
  the same wait, and every integer in the range is equally likely for a
  uniform draw (so many relays or agents do not retry in step).
No I/O, no clock, no random source of its own.
"""

from __future__ import annotations

import math

from quota.core.errors import InvalidValue

_MAX_DOUBLINGS = 30  # 2**30 times any sane first wait is far beyond any cap


def backoff_ms(
    attempt: int, *, first_ms: int, cap_ms: int | None = None, jitter: float = 0.5, draw: float
) -> int:
    """The wait before retry `attempt` (0 for the first): doubled, capped, then jittered."""
    if attempt < 0 or first_ms < 0 or (cap_ms is not None and cap_ms < 0):
        raise InvalidValue("attempt, first_ms and cap_ms must not be negative")
    if not (0.0 <= jitter <= 1.0 and 0.0 <= draw < 1.0):
        raise InvalidValue("jitter must lie in [0, 1] and draw in [0, 1)")
    full = first_ms << min(attempt, _MAX_DOUBLINGS)
    if cap_ms is not None:
        full = min(full, cap_ms)
    low = full - math.ceil(full * jitter)
    return min(full, low + int(draw * (full - low + 1)))
