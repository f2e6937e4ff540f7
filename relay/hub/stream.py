"""The record every stream shares (TCP stream or UDP flow) and its dispatcher.

A `Stream` holds the ids, the tunnel, the owner's bucket and a
quota.core.streams.StreamMachine; its I/O part (`Carrier`: two TCP legs, or a
UDP flow) is composed in, not inherited. `handle` feeds one event to the
machine and carries out every action it returns at once, in order, with no
await in between: the only place a stream decision turns into an effect.

Invariants:
- Every close goes through the machine (and so the state table): one `Close`
  per stream, which detaches its meters (unused headroom returns to the
  bucket), takes it out of the live table, then wakes the meters that freed
  bytes reach.
- `bytes_up` counts payload from the connecting side to the owner,
  `bytes_down` the way back; `bytes_dropped` only datagrams (TCP holds instead).
- The fair shares a stream took (`held`) are given back by its host when it
  closes, exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from quota.core.bucket import Bucket, Meter
from quota.core.stream import PauseClock, PauseReason, StreamState
from quota.core.streams import (
    Action,
    AttachPeers,
    BytesHeld,
    Close,
    CloseLegs,
    CloseRequested,
    Event,
    HeldCleared,
    LogRecord,
    OperatorPaused,
    Pause,
    Register,
    Resume,
    Side,
    StreamMachine,
)
from relay.hub.shares import Held
from relay.hub.tunnels import Tunnel


def detach_meters(bucket: Bucket | None, meters: Iterable[Meter | None]) -> tuple[Meter, ...]:
    """Detach a closed stream's meters; returns the meters the freed bytes woke."""
    wakes: tuple[Meter, ...] = ()
    if bucket is not None:
        for meter in meters:
            if meter is not None:
                wakes += bucket.detach(meter)
    return wakes


class Carrier(Protocol):
    """The I/O half of a stream: what the dispatcher asks of its legs or flow."""

    @property
    def bytes_up(self) -> int: ...
    @property
    def bytes_down(self) -> int: ...
    @property
    def bytes_dropped(self) -> int: ...
    def holding(self) -> bool: ...
    def pause(self, reason: PauseReason, sides: tuple[Side, ...]) -> None: ...
    def resume(self, reasons: tuple[PauseReason, ...], sides: tuple[Side, ...]) -> None: ...
    def attach_peers(self) -> None: ...
    def close_legs(self, sides: tuple[Side, ...]) -> None: ...
    def detach(self) -> tuple[Meter, ...]: ...
    def closed(self) -> None: ...


class StreamHost(Protocol):
    """What a stream needs from the relay around it (the hub)."""

    def now_ms(self) -> int: ...
    def stream_opened(self, stream: Stream) -> None: ...
    def stream_closed(self, stream: Stream) -> None: ...
    def record(self, stream: Stream, event: str) -> None: ...
    def dispatch(self, wakes: tuple[Meter, ...]) -> None: ...
    def check_low_water(self, bucket: Bucket) -> None: ...
    def count_pause(self, reason: PauseReason) -> None: ...


class Stream:
    __slots__ = (
        "bucket",
        "carrier",
        "held",
        "host",
        "machine",
        "peer_desc",
        "quiet",
        "stream_id",
        "tunnel",
    )

    def __init__(
        self,
        host: StreamHost,
        *,
        stream_id: str,
        tunnel: Tunnel,
        peer_desc: str,
        bucket: Bucket | None,
        datagrams: bool = False,
    ) -> None:
        self.host = host
        self.stream_id = stream_id
        self.tunnel = tunnel
        self.peer_desc = peer_desc
        self.bucket = bucket
        self.machine = StreamMachine(opened_at_ms=host.now_ms(), datagrams=datagrams)
        self.carrier: Carrier  # set by the TCP pair or the UDP flow that carries it
        self.held: tuple[Held, ...] = ()  # fair shares taken for this stream
        self.quiet = False  # writes no record (an unanswered UDP flow, summed apart)

    # -- figures ----------------------------------------------------------------

    @property
    def state(self) -> StreamState:
        return self.machine.state

    @property
    def clock(self) -> PauseClock:
        return self.machine.clock

    @property
    def close_reason(self) -> str:
        return self.machine.close_reason

    @property
    def opened_at_ms(self) -> int:
        return self.machine.opened_at_ms

    @property
    def bytes_up(self) -> int:
        return self.carrier.bytes_up

    @property
    def bytes_down(self) -> int:
        return self.carrier.bytes_down

    @property
    def bytes_dropped(self) -> int:
        return self.carrier.bytes_dropped

    # -- events in, actions out -----------------------------------------------------

    def handle(self, event: Event) -> None:
        for action in self.machine.handle(event):
            self._carry_out(action)

    def _carry_out(self, action: Action) -> None:
        carrier, host = self.carrier, self.host
        match action:
            case Register():
                host.stream_opened(self)
            case LogRecord():
                host.record(self, action.event)
            case AttachPeers():
                carrier.attach_peers()
            case Pause():
                carrier.pause(action.reason, action.sides)
                host.count_pause(action.reason)
            case Resume():
                carrier.resume(action.reasons, action.sides)
            case CloseLegs():
                carrier.close_legs(action.sides)
            case Close():
                wakes = carrier.detach()
                host.stream_closed(self)
                host.dispatch(wakes)
                carrier.closed()

    def close(self, reason: str, *, close_legs: bool = True) -> None:
        """Close now (operator, shutdown, revocation, grace expired, idle, refused)."""
        now = self.host.now_ms()
        self.handle(CloseRequested(reason=reason, now_ms=now, close_legs=close_legs))

    def owner_changed(self, active: bool) -> None:
        """The owner's subscription changed: pause even idle legs, or resume free ones.

        Active again while a leg still holds bytes: the stream waits on, for its bucket's reason.
        """
        if self.bucket is None:
            return
        now = self.host.now_ms()
        if not active:
            self.handle(BytesHeld(inactive=True, now_ms=now))
        elif self.carrier.holding():
            self.handle(BytesHeld(inactive=False, can_pay=self.bucket.can_pay, now_ms=now))
        else:
            self.handle(HeldCleared(holding=False, now_ms=now))

    def bucket_changed(self) -> None:
        """Billing said whether more can come: a waiting stream waits for the new reason."""
        bucket = self.bucket
        if bucket is None or bucket.inactive or not self.carrier.holding():
            return
        now = self.host.now_ms()
        self.handle(BytesHeld(inactive=False, can_pay=bucket.can_pay, now_ms=now))

    def operator_pause(self, paused: bool) -> None:
        """An operator paused the stream, or resumed it."""
        self.handle(OperatorPaused(paused=paused, now_ms=self.host.now_ms()))
