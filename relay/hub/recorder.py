"""Stream-log records: what a stream looks like at open, pause, resume, interim and close.

Invariants:
- A record is built from the stream's figures at the moment its event is
  decided, and goes to the debug log and, when there is one, the stream log.
- A stream marked `quiet` (a UDP flow that has not been answered yet) writes
  nothing: it is summed into an `unanswered` record instead (relay.udp).
- Two records stand for no live stream, each written once, already closed:
  `refused` (a fair share refused a tunnel or a stream; `close_reason` is the
  cause) and `unanswered` (the UDP flows of one tunnel that ended without an
  answer in one interval; `peer` says how many).
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from quota.core.flowtable import UnansweredRow
from quota.core.stream import LOGGED_REASONS, PauseClock
from relay.hub.stream import Stream
from relay.hub.tunnels import Tunnel
from relay.registry import Agent
from relay.streamlog.record import StreamRecord
from relay.streamlog.writer import StreamLog

log = structlog.get_logger("relay")


class StreamRecorder:
    def __init__(self, relay_id: str, streamlog: StreamLog | None) -> None:
        self.relay_id = relay_id
        self.streamlog = streamlog

    def record(self, stream: Stream, event: str, now_ms: int) -> None:
        if stream.quiet:
            return
        tunnel = stream.tunnel
        log.debug(
            f"stream_{event}",
            stream_id=stream.stream_id,
            tunnel_id=tunnel.tunnel_id,
            bytes_up=stream.bytes_up,
            bytes_down=stream.bytes_down,
            reason=stream.close_reason or None,
        )
        if self.streamlog is None:
            return
        clock = stream.clock
        self.streamlog.record(
            StreamRecord(
                event=event,
                at_ms=now_ms,
                stream_id=stream.stream_id,
                tunnel_id=tunnel.tunnel_id,
                agent_id=tunnel.agent.agent_id,
                account=tunnel.agent.account,
                relay_id=self.relay_id,
                kind=tunnel.kind,
                peer=stream.peer_desc,
                target=tunnel.target,
                opened_at_ms=stream.opened_at_ms,
                bytes_up=stream.bytes_up,
                bytes_down=stream.bytes_down,
                bytes_dropped=stream.bytes_dropped,
                pauses=clock.count,
                paused_ms=clock.total_ms(now_ms),
                state=stream.state.value,
                close_reason=stream.close_reason or None,
                pause_reason=None if clock.reason is None else LOGGED_REASONS[clock.reason],
                **paused_by_reason(clock, now_ms),
            )
        )

    def refused(
        self, *, stream_id: str, cause: str, agent: Agent, attempt: Attempt, now_ms: int
    ) -> None:
        """One record for something a fair share refused: no bytes, closed at once."""
        log.debug("stream_refused", stream_id=stream_id, tunnel_id=attempt.tunnel_id, cause=cause)
        if self.streamlog is None:
            return
        self.streamlog.record(
            StreamRecord(
                event="refused",
                at_ms=now_ms,
                stream_id=stream_id,
                tunnel_id=attempt.tunnel_id,
                agent_id=agent.agent_id,
                account=agent.account,
                relay_id=self.relay_id,
                kind=attempt.kind,
                peer=attempt.peer,
                target=attempt.target,
                opened_at_ms=now_ms,
                bytes_up=0,
                bytes_down=0,
                bytes_dropped=0,
                pauses=0,
                paused_ms=0,
                state="closed",
                close_reason=cause,
            )
        )

    def unanswered(self, *, stream_id: str, tunnel: Tunnel, row: UnansweredRow) -> None:
        """One record for the UDP flows of `tunnel` that ended unanswered in one interval."""
        log.debug("stream_unanswered", stream_id=stream_id, tunnel_id=tunnel.tunnel_id)
        if self.streamlog is None:
            return
        self.streamlog.record(
            StreamRecord(
                event="unanswered",
                at_ms=row.until,
                stream_id=stream_id,
                tunnel_id=tunnel.tunnel_id,
                agent_id=tunnel.agent.agent_id,
                account=tunnel.agent.account,
                relay_id=self.relay_id,
                kind=tunnel.kind,
                peer=f"unanswered flows: {row.flows}",
                target=tunnel.target,
                opened_at_ms=row.since,
                bytes_up=row.bytes_in,
                bytes_down=0,
                bytes_dropped=row.bytes_dropped,
                pauses=0,
                paused_ms=0,
                state="closed",
                close_reason="unanswered",
            )
        )


def paused_by_reason(clock: PauseClock, now_ms: int) -> dict[str, int]:
    """The record's `paused_<reason>_ms` fields: paused time per logged reason."""
    return {f"paused_{name}_ms": clock.reason_ms(r, now_ms) for r, name in LOGGED_REASONS.items()}


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """What was refused, as its `refused` record names it."""

    tunnel_id: str
    kind: str
    peer: str
    target: str

    @classmethod
    def on(cls, tunnel: Tunnel, peer: str) -> Attempt:
        """A stream refused on an existing tunnel."""
        return cls(tunnel_id=tunnel.tunnel_id, kind=tunnel.kind, peer=peer, target=tunnel.target)
