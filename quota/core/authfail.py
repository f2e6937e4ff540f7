"""Authentication failures counted per source, and when a source must wait (HTTP 429).

Invariants:
- A source (an address) may fail `limit` times within a window of `window_ms`
  starting at its first failure; after that `retry_after_ms` is positive until
  the window ends, then the source starts afresh. A success never clears a
  window: a guesser cannot reset its count with a token it owns.
- `retry_after_ms` is 0 or the time left in the source's window, so the
  answer's Retry-After never exceeds `window_ms`.
- Memory is bounded: at most `max_sources` windows are kept; a new source
  beyond that evicts the oldest window (sources of TCP peers cannot be spoofed,
  so an attacker with many addresses only dilutes its own counts).
- Pure: `now` (milliseconds, never decreasing) is a parameter.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from quota.core.errors import InvalidValue


@dataclass(slots=True)
class _Window:
    start: int
    failures: int


class AuthFailures:
    """Failures per source in fixed windows; a source past `limit` waits for its window's end."""

    def __init__(self, *, limit: int = 20, window_ms: int = 60_000, max_sources: int = 10_000):
        if limit < 1 or window_ms <= 0 or max_sources < 1:
            raise InvalidValue(
                f"bad auth failure limit: {limit} per {window_ms} ms, {max_sources} sources"
            )
        self.limit = limit
        self.window_ms = window_ms
        self.max_sources = max_sources
        self._windows: OrderedDict[str, _Window] = OrderedDict()  # oldest window first
        self._now = 0

    def __len__(self) -> int:
        return len(self._windows)

    def retry_after_ms(self, source: str, now: int) -> int:
        """How long `source` must wait before its next attempt counts (0: it may try now)."""
        window = self._current(source, now)
        if window is None or window.failures < self.limit:
            return 0
        return window.start + self.window_ms - now

    def failed(self, source: str, now: int) -> None:
        """Count one failure of `source` at `now`."""
        window = self._current(source, now)
        if window is not None:
            window.failures += 1
            return
        self._prune(now)
        if len(self._windows) >= self.max_sources:
            self._windows.popitem(last=False)
        self._windows[source] = _Window(start=now, failures=1)

    def _current(self, source: str, now: int) -> _Window | None:
        if now < self._now:
            raise InvalidValue(f"time went back: {now} < {self._now}")
        self._now = now
        window = self._windows.get(source)
        if window is not None and now - window.start >= self.window_ms:
            del self._windows[source]
            return None
        return window

    def _prune(self, now: int) -> None:
        # windows are kept in start order: the ended ones are at the front
        while self._windows:
            window = next(iter(self._windows.values()))
            if now - window.start < self.window_ms:
                return
            self._windows.popitem(last=False)
