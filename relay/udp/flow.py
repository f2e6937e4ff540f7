"""A UDP flow: one peer of a UDP tunnel, metered per datagram, a stream in the log.

Invariants:
- A datagram passes whole or not at all (`Bucket.take_whole`); one that does not
  fit is dropped and added to `bytes_dropped`, never to `bytes_up`/`bytes_down`,
  so the bucket's `used` is exactly the payload bytes delivered.
- A flow never holds bytes and never pauses a socket: UDP cannot be held back.
  While its datagrams are dropped for lack of quota it shows as "paused" in the
  stream log; the first datagram that passes again makes it "open". The flow,
  its id and the tunnel's port stay either way.
- A flow is closed exactly once (idle expiry, its channel or tunnel gone,
  shutdown, grace expired), through its `Stream` and so the state table:
  meters detached, one close record, `on_close` run.
- A flow is the carrier of a `Stream` (relay.hub.stream), the record it
  shares with TCP streams; the pause/open marks are quota.core.streams'
  decisions (`Datagram` events), taken only when a datagram changes them.
- Refusals of bad input are logged once per cause and then at most once per
  `RefusalLog.every_ms`, with the number suppressed meanwhile; counts are kept.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import structlog

from quota.core.bucket import Meter
from quota.core.stream import PauseReason, StreamState
from quota.core.streams import Datagram, Side
from relay.hub.stream import Stream, detach_meters
from relay.hub.tunnels import Tunnel

log = structlog.get_logger("relay.udp")


class RefusalLog:
    """Counts refused input by cause; logs a cause at most once per `every_ms`."""

    def __init__(self, clock_ms: Callable[[], int], every_ms: int = 10_000) -> None:
        self.clock_ms = clock_ms
        self.every_ms = every_ms
        self.counts: Counter[str] = Counter()
        self._last: dict[str, int] = {}
        self._suppressed: Counter[str] = Counter()

    def refuse(self, cause: str, **context: Any) -> None:
        self.counts[cause] += 1
        now = self.clock_ms()
        last = self._last.get(cause)
        if last is not None and now - last < self.every_ms:
            self._suppressed[cause] += 1
            return
        self._last[cause] = now
        suppressed = self._suppressed.pop(cause, 0)
        log.warning("udp_refused", cause=cause, suppressed=suppressed, **context)


class UdpFlow:
    """One UDP flow; `bytes_up` is payload from the connecting side to the owner."""

    def __init__(
        self,
        stream: Stream,
        *,
        flow_id: int,
        on_close: Callable[[UdpFlow], None],
        source: str = "",
    ) -> None:
        self.stream = stream
        self.flow_id = flow_id
        self.source = source  # the peer's address (public port) or support channel
        self.on_close = on_close
        bucket = stream.bucket
        self.up_meter: Meter | None = bucket.attach(self) if bucket else None
        self.down_meter: Meter | None = bucket.attach(self) if bucket else None
        self._unmetered = [0, 0]  # up, down: counted here when metering is off
        self.dropped = 0
        self.last_ms = stream.host.now_ms()
        self.reply: Callable[[UdpFlow, bytes], None] | None = None  # where replies go
        stream.carrier = self

    @property
    def tunnel(self) -> Tunnel:
        return self.stream.tunnel

    @property
    def state(self) -> StreamState:
        return self.stream.state

    def close(self, reason: str) -> None:
        self.stream.close(reason)

    # -- figures ------------------------------------------------------------------

    @property
    def bytes_up(self) -> int:
        m = self.up_meter
        return m.passed if m is not None else self._unmetered[0]

    @property
    def bytes_down(self) -> int:
        m = self.down_meter
        return m.passed if m is not None else self._unmetered[1]

    @property
    def bytes_dropped(self) -> int:
        return self.dropped

    # -- the datagram path ------------------------------------------------------------

    def admit(self, meter: Meter | None, n: int, index: int) -> bool:
        """May a datagram of `n` payload bytes pass? Counted as passed, or as dropped."""
        if meter is None:
            self._unmetered[index] += n
            return True
        if n <= meter.allowance:  # the hot path: two integer operations
            meter.allowance -= n
            meter.passed += n
            ok = True
        else:
            ok = meter.bucket.take_whole(meter, n)
            self.stream.host.check_low_water(meter.bucket)
        if not ok:
            self.dropped += n
        # Only a change of mark is a decision worth the core's time.
        if (self.stream.state is StreamState.PAUSED) is ok:
            bucket, now = meter.bucket, self.stream.host.now_ms()
            mark = Datagram(passed=ok, now_ms=now, inactive=bucket.inactive, can_pay=bucket.can_pay)
            self.stream.handle(mark)
        return ok

    def admit_up(self, n: int) -> bool:
        return self.admit(self.up_meter, n, 0)

    def admit_down(self, n: int) -> bool:
        return self.admit(self.down_meter, n, 1)

    def drop(self, n: int) -> None:
        """A datagram dropped before metering (oversized, congested): counted, never used."""
        self.dropped += n

    def on_wake(self) -> None:
        """Never called: a datagram meter never waits, so no grant wakes it."""

    # -- Carrier: a flow holds nothing and pauses no socket ----------------------------

    def holding(self) -> bool:
        return False

    def pause(self, reason: PauseReason, sides: tuple[Side, ...]) -> None:
        """UDP cannot be held back: datagrams that do not fit are dropped as they come."""

    def resume(self, reasons: tuple[PauseReason, ...], sides: tuple[Side, ...]) -> None:
        """Nothing was paused, so nothing resumes."""

    def attach_peers(self) -> None:
        """Replies find their way through `reply`, set by the channel that made the flow."""

    def close_legs(self, sides: tuple[Side, ...]) -> None:
        """No transport of its own: the tunnel's socket and channels outlive a flow."""

    def detach(self) -> tuple[Meter, ...]:
        # UDP meters never wait, so what their freed bytes wake are TCP legs
        return detach_meters(self.stream.bucket, (self.up_meter, self.down_meter))

    def closed(self) -> None:
        self.on_close(self)
