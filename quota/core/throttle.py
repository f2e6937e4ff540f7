"""At most one log line per key (a source, a cause) per interval, with the number suppressed.

Invariants:
- For each key, `note` answers `LogNow` at most once per `interval_ms`; every
  other event of the window is counted and reported by that key's next `LogNow`
  or by `flush`, so no event is lost: the lines plus their `suppressed` counts
  add up to the events noted.
- Memory is bounded: at most `max_keys` keys are tracked; events of further keys
  (a flood of spoofed sources) are throttled together under `overflow_key`.
  `flush` reports every ended window that suppressed something and forgets
  the quiet ones; `drain` (at exit) reports every window that suppressed
  something. Lines of one key are always at least `interval_ms` apart.
- Pure: `now` (milliseconds, never decreasing) is a parameter.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from quota.core.errors import InvalidValue


@dataclass(frozen=True, slots=True, kw_only=True)
class LogNow:
    """Write one line for `key` now, saying `suppressed` events were not logged before it."""

    key: str
    suppressed: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Suppress:
    """Write nothing: the event is counted into the key's next line."""


@dataclass(slots=True)
class _Window:
    start: int
    suppressed: int = 0


class LogThrottle:
    """One line per key per interval; the rest counted."""

    def __init__(
        self, *, interval_ms: int = 60_000, max_keys: int = 4096, overflow_key: str = "*"
    ) -> None:
        if interval_ms <= 0 or max_keys < 1:
            raise InvalidValue(f"bad log throttle: interval {interval_ms} ms, {max_keys} keys")
        self.interval_ms = interval_ms
        self.max_keys = max_keys
        self.overflow_key = overflow_key
        self._windows: OrderedDict[str, _Window] = OrderedDict()  # oldest window first
        self._now = 0

    def __len__(self) -> int:
        return len(self._windows)

    def note(self, key: str, now: int) -> LogNow | Suppress:
        """One event of `key` at `now`: log it now, or count it as suppressed."""
        self._advance(now)
        window = self._windows.get(key)
        if window is None:
            self._prune_quiet(now)
            if len(self._windows) >= self.max_keys:
                key = self.overflow_key
                window = self._windows.get(key)
        if window is None:
            self._windows[key] = _Window(start=now)
            return LogNow(key=key, suppressed=0)
        if now - window.start < self.interval_ms:
            window.suppressed += 1
            return Suppress()
        self._windows[key] = _Window(start=now)
        self._windows.move_to_end(key)
        return LogNow(key=key, suppressed=window.suppressed)

    def flush(self, now: int) -> list[LogNow]:
        """A line for each ended window that suppressed something; quiet ones are forgotten.

        A key given a line here starts a new window now, so its lines stay an
        interval apart; call this about once an interval so counts are not held back.
        """
        self._advance(now)
        lines: list[LogNow] = []
        while self._windows:
            key, window = next(iter(self._windows.items()))
            if now - window.start < self.interval_ms:
                break
            del self._windows[key]
            if window.suppressed:
                lines.append(LogNow(key=key, suppressed=window.suppressed))
                self._windows[key] = _Window(start=now)
        return lines

    def drain(self, now: int) -> list[LogNow]:
        """A line for every window that suppressed something, ended or not; forget them all.

        For a process that stops: after it, no event is owed a line.
        """
        self._advance(now)
        lines = [LogNow(key=k, suppressed=w.suppressed) for k, w in self._windows.items()]
        self._windows.clear()
        return [line for line in lines if line.suppressed]

    def _prune_quiet(self, now: int) -> None:
        # ended windows that suppressed nothing owe no line: drop them for room
        while self._windows:
            key, window = next(iter(self._windows.items()))
            if window.suppressed or now - window.start < self.interval_ms:
                return
            del self._windows[key]

    def _advance(self, now: int) -> None:
        if now < self._now:
            raise InvalidValue(f"time went back: {now} < {self._now}")
        self._now = now
