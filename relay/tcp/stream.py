"""A stream: one TCP connection through a tunnel, two legs, one owner's bucket.

Invariants:
- Both legs share the owner's quota state: while either leg holds bytes the
  bucket could not pass, both legs are paused (reason QUOTA, or INACTIVE when
  the owner has no subscription); when neither holds any, both may read again.
- `bytes_up` counts payload read from the connecting side (support agent or
  public client) and forwarded to the owner; `bytes_down` the way back.
- A stream is finished exactly once: its meters are detached (unused headroom
  returns to the bucket) and one close record goes to the stream log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quota.core.bucket import Bucket, Meter
from quota.core.stream import PauseClock, PauseReason, StreamState, transition
from relay.tcp.pump import Leg

if TYPE_CHECKING:
    from relay.hub.hub import Hub
    from relay.hub.tunnels import Tunnel


class Stream:
    def __init__(
        self,
        hub: Hub,
        *,
        stream_id: str,
        tunnel: Tunnel,
        peer_desc: str,
        bucket: Bucket | None,
    ) -> None:
        self.hub = hub
        self.stream_id = stream_id
        self.tunnel = tunnel
        self.peer_desc = peer_desc
        self.bucket = bucket
        self.up: Leg  # the connecting side: support channel or public TCP socket
        self.down: Leg  # the owner's side: forwarded-tcpip channel to the client agent
        self.state = StreamState.OPENING
        self.clock = PauseClock()
        self.opened_at_ms = hub.now_ms()
        self.close_reason = ""
        self.pause_reason = PauseReason.QUOTA

    def bind(self, up: Leg, down: Leg) -> None:
        """Attach both legs to the stream and, when metered, to the owner's bucket."""
        self.up, self.down = up, down
        for leg in (up, down):
            leg.pause(PauseReason.CONNECTING)
            if self.bucket is not None:
                leg.meter = self.bucket.attach(leg)

    # -- figures ----------------------------------------------------------------

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
        """Bytes dropped: always 0 for TCP, which holds bytes instead (UDP flows override)."""
        return 0

    # -- lifecycle ----------------------------------------------------------------

    def leg_connected(self, leg: Leg) -> None:
        if self.state is not StreamState.OPENING or not (self.up.connected and self.down.connected):
            return
        self.state = transition(self.state, StreamState.OPEN)
        self.hub.stream_opened(self)
        self.up.attach_peer(self.down)
        self.down.attach_peer(self.up)

    def leg_lost(self, leg: Leg, exc: Exception | None) -> None:
        if self.state is StreamState.CLOSED:
            return
        other = self.down if leg is self.up else self.up
        other.close()
        self.finish("peer_closed" if leg is self.up else "agent_closed")

    def maybe_finish(self) -> None:
        if self.up.eof_sent and self.down.eof_sent and self.state is not StreamState.CLOSED:
            self.up.close()
            self.down.close()
            self.finish("done")

    def close(self, reason: str) -> None:
        """Close both legs now (operator, shutdown, revocation, grace expired)."""
        if self.state is StreamState.CLOSED:
            return
        self.up.close()
        self.down.close()
        self.finish(reason)

    def finish(self, reason: str) -> None:
        if self.state is StreamState.CLOSED:
            return
        now = self.hub.now_ms()
        self.clock.resume(now)
        self.state = StreamState.CLOSED
        self.close_reason = reason
        wakes: tuple[Meter, ...] = ()
        if self.bucket is not None:
            for leg in (self.up, self.down):
                if leg.meter is not None:
                    wakes += self.bucket.detach(leg.meter)
        self.hub.stream_closed(self)
        self.hub.dispatch(wakes)

    # -- quota ------------------------------------------------------------------

    def quota_wait(self) -> None:
        """A leg holds bytes the bucket could not pass: pause both legs."""
        assert self.bucket is not None
        reason = PauseReason.INACTIVE if self.bucket.inactive else PauseReason.QUOTA
        self.pause_reason = reason
        self.up.pause(reason)
        self.down.pause(reason)
        if self.state is StreamState.OPEN:
            self.state = transition(self.state, StreamState.PAUSED)
            self.clock.pause(self.hub.now_ms())
            self.hub.stream_paused(self, reason)

    def quota_check(self) -> None:
        """Resume both legs once neither holds bytes. Held bytes were written first."""
        if self.up.held or self.down.held or self.state is not StreamState.PAUSED:
            return
        self.state = transition(self.state, StreamState.OPEN)
        self.clock.resume(self.hub.now_ms())
        self.hub.stream_resumed(self)
        for reason in (PauseReason.QUOTA, PauseReason.INACTIVE):
            self.up.unpause(reason)
            self.down.unpause(reason)

    def after_take(self, wakes: tuple[Meter, ...]) -> None:
        if wakes:
            self.hub.dispatch(wakes)
        if self.bucket is not None:
            self.hub.check_low_water(self.bucket)
