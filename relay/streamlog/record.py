"""One stream-log record: an event in a stream's life, with its cumulative figures; its schema."""

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

_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE streams (
        stream_id TEXT PRIMARY KEY,
        tunnel_id TEXT NOT NULL, agent_id TEXT NOT NULL, account TEXT NOT NULL,
        relay_id TEXT NOT NULL, kind TEXT NOT NULL, peer TEXT NOT NULL, target TEXT NOT NULL,
        opened_at_ms INTEGER NOT NULL, closed_at_ms INTEGER, updated_at_ms INTEGER NOT NULL,
        last_event TEXT NOT NULL,
        bytes_up INTEGER NOT NULL, bytes_down INTEGER NOT NULL, bytes_dropped INTEGER NOT NULL,
        pauses INTEGER NOT NULL, paused_ms INTEGER NOT NULL,
        state TEXT NOT NULL, close_reason TEXT
    );
    CREATE INDEX streams_agent ON streams (agent_id, opened_at_ms);
    CREATE INDEX streams_account ON streams (account, opened_at_ms);
    CREATE INDEX streams_tunnel ON streams (tunnel_id, opened_at_ms);
    CREATE INDEX streams_opened ON streams (opened_at_ms);
    CREATE INDEX streams_relay_state ON streams (relay_id, state);
    CREATE TABLE stream_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event TEXT NOT NULL, at_ms INTEGER NOT NULL,
        stream_id TEXT NOT NULL, tunnel_id TEXT NOT NULL, agent_id TEXT NOT NULL,
        account TEXT NOT NULL, relay_id TEXT NOT NULL, kind TEXT NOT NULL,
        peer TEXT NOT NULL, target TEXT NOT NULL, opened_at_ms INTEGER NOT NULL,
        bytes_up INTEGER NOT NULL, bytes_down INTEGER NOT NULL, bytes_dropped INTEGER NOT NULL,
        pauses INTEGER NOT NULL, paused_ms INTEGER NOT NULL,
        state TEXT NOT NULL, close_reason TEXT
    );
    CREATE INDEX stream_events_stream ON stream_events (stream_id);
    CREATE INDEX stream_events_at ON stream_events (at_ms);
    """,
    # 2: why a stream is paused, and its paused time per reason
    "".join(
        f"ALTER TABLE {table} ADD COLUMN pause_reason TEXT;"
        + "".join(
            f" ALTER TABLE {table} ADD COLUMN paused_{name}_ms INTEGER NOT NULL DEFAULT 0;"
            for name in ("quota", "lease_wait", "inactive", "operator", "flow")
        )
        for table in ("streams", "stream_events")
    ),
)
