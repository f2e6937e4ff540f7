"""Stream-log records: what a stream looks like at open, pause, resume, interim and close.

Invariant: a record is built from the stream's figures at the moment its event
is decided, and goes to the debug log and, when there is one, the stream log.
"""

from __future__ import annotations

import structlog

from relay.hub.stream import Stream
from relay.streamlog.writer import StreamLog, StreamRecord

log = structlog.get_logger("relay")


class StreamRecorder:
    def __init__(self, relay_id: str, streamlog: StreamLog | None) -> None:
        self.relay_id = relay_id
        self.streamlog = streamlog

    def record(self, stream: Stream, event: str, now_ms: int) -> None:
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
                pauses=stream.clock.count,
                paused_ms=stream.clock.total_ms(now_ms),
                state=stream.state.value,
                close_reason=stream.close_reason or None,
            )
        )
