"""One stream-log record: an event in a stream's life, with its cumulative figures."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamRecord:
    """One event in a stream's life; byte and pause figures are cumulative.

    Not validated (building one must never raise on the hot path): any state
    other than "closed" counts as still alive, and is closed on restart.
    """

    event: str  # "open" | "interim" | "pause" | "reason" | "resume" | "close" | ...
    at_ms: int  # unix epoch milliseconds of the event
    stream_id: str
    tunnel_id: str
    agent_id: str
    account: str
    relay_id: str
    kind: str  # "tcp_endpoint" | "tcp_public" | "udp_endpoint" | "udp_public"
    peer: str
    target: str
    opened_at_ms: int
    bytes_up: int
    bytes_down: int
    bytes_dropped: int
    pauses: int
    paused_ms: int
    state: str  # "open" | "paused" | "closed"
    close_reason: str | None = None
    pause_reason: str | None = None  # why it is paused now (quota.core.stream.LOGGED_REASONS)
    # paused time per reason; the five add up to `paused_ms`
    paused_quota_ms: int = 0
    paused_lease_wait_ms: int = 0
    paused_inactive_ms: int = 0
    paused_operator_ms: int = 0
    paused_flow_ms: int = 0


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(StreamRecord))
