"""A TCP stream's two legs: the carrier of its `Stream`, and what its legs report to.

Invariants:
- Both legs share the owner's quota state: while either leg holds bytes the
  bucket could not pass, both legs are paused (reason QUOTA, LEASE while a
  lease is on its way, or INACTIVE when the owner has no subscription); when
  neither holds any, both may read again.
- A leg whose write buffer (its socket's, or its SSH connection's) went above
  `write_buffer` pauses the other leg (reason BUFFER) until it drained.
- What a leg reports (connected, lost, holding, flushed, EOF both ways, its
  write buffer full or drained) becomes one quota.core.streams event; the
  decision and its effect happen in `Stream.handle`, never here. The byte path
  calls in only when a chunk crosses its meter's allowance.
"""

from __future__ import annotations

from quota.core.bucket import Meter
from quota.core.stream import PauseReason
from quota.core.streams import (
    BufferDrained,
    BufferFull,
    BytesHeld,
    EofBothWays,
    FlowPaused,
    FlowResumed,
    HeldCleared,
    LegConnected,
    LegLost,
    Side,
)
from relay.hub.stream import Stream, detach_meters
from relay.ssh.backlog import DEFAULT_WRITE_BUFFER
from relay.tcp.pump import Leg


class TcpPair:
    """`up` is the connecting side (support channel or public socket), `down` the owner's."""

    __slots__ = ("down", "stream", "up", "write_buffer")

    def __init__(self, stream: Stream, *, write_buffer: int = DEFAULT_WRITE_BUFFER) -> None:
        self.stream = stream
        self.write_buffer = write_buffer  # the high-water mark of each leg's write buffer
        self.up: Leg
        self.down: Leg

    def bind(self, up: Leg, down: Leg) -> None:
        """Attach both legs to the stream and, when metered, to the owner's bucket."""
        self.up, self.down = up, down
        bucket = self.stream.bucket
        for leg in (up, down):
            leg.pause(PauseReason.CONNECTING)
            if bucket is not None:
                leg.meter = bucket.attach(leg)
        self.stream.carrier = self

    def _leg(self, side: Side) -> Leg:
        return self.up if side is Side.UP else self.down

    def _side(self, leg: Leg) -> Side:
        return Side.UP if leg is self.up else Side.DOWN

    def _now(self) -> int:
        return self.stream.host.now_ms()

    # -- what the legs report (relay.tcp.pump.LegStream) ------------------------------

    def leg_connected(self, leg: Leg) -> None:
        both = self.up.connected and self.down.connected
        self.stream.handle(LegConnected(all_connected=both, now_ms=self._now()))

    def leg_lost(self, leg: Leg, exc: Exception | None) -> None:
        self.stream.handle(LegLost(side=self._side(leg), now_ms=self._now()))

    def maybe_finish(self) -> None:
        if self.up.eof_sent and self.down.eof_sent:
            self.stream.handle(EofBothWays(now_ms=self._now()))

    def quota_wait(self) -> None:
        """A leg holds bytes the bucket could not pass: pause both legs."""
        bucket = self.stream.bucket
        assert bucket is not None
        held = BytesHeld(inactive=bucket.inactive, can_pay=bucket.can_pay, now_ms=self._now())
        self.stream.handle(held)

    def quota_check(self) -> None:
        """A leg flushed its held bytes (written before any reading resumes)."""
        self.stream.handle(HeldCleared(holding=self.holding(), now_ms=self._now()))

    def after_take(self, wakes: tuple[Meter, ...]) -> None:
        host, bucket = self.stream.host, self.stream.bucket
        if wakes:
            host.dispatch(wakes)
        if bucket is not None:
            host.check_low_water(bucket)

    def flow(self, leg: Leg, paused: bool) -> None:
        side = self._side(leg)
        self.stream.handle(FlowPaused(side=side) if paused else FlowResumed(side=side))

    def buffer(self, leg: Leg, full: bool) -> None:
        side, now = self._side(leg), self._now()
        event = BufferFull(side=side, now_ms=now) if full else BufferDrained(side=side, now_ms=now)
        self.stream.handle(event)

    # -- Carrier: what the dispatcher does to the legs -----------------------------------

    @property
    def bytes_up(self) -> int:
        m = self.up.meter
        return m.passed if m is not None else 0

    @property
    def bytes_down(self) -> int:
        m = self.down.meter
        return m.passed if m is not None else 0

    @property
    def bytes_dropped(self) -> int:
        """Always 0: TCP holds bytes instead of dropping them."""
        return 0

    def holding(self) -> bool:
        return bool(self.up.held or self.down.held)

    def pause(self, reason: PauseReason, sides: tuple[Side, ...]) -> None:
        for side in sides:
            self._leg(side).pause(reason)

    def resume(self, reasons: tuple[PauseReason, ...], sides: tuple[Side, ...]) -> None:
        for reason in reasons:
            for side in sides:
                self._leg(side).unpause(reason)

    def attach_peers(self) -> None:
        self.up.attach_peer(self.down)
        self.down.attach_peer(self.up)

    def close_legs(self, sides: tuple[Side, ...]) -> None:
        for side in sides:
            self._leg(side).close()

    def detach(self) -> tuple[Meter, ...]:
        return detach_meters(self.stream.bucket, (self.up.meter, self.down.meter))

    def closed(self) -> None:
        """Nothing more: the legs close through their transports."""
