"""The relay's readiness: SSH front listening and a stream log whose writes succeed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from relay.admin.health import RelayHealth
from relay.streamlog.writer import StreamLog, StreamLogError
from tests.relay.test_streamlog import rec


async def test_a_failing_stream_log_makes_the_relay_not_ready_until_a_write_succeeds(
    tmp_path: Path,
) -> None:
    """A refused stream-log write is a readiness reason; the next good write clears it."""
    db = tmp_path / "s.db"
    async with StreamLog(db, relay_id="r1", flush_ms=60_000) as log:
        health = RelayHealth(log, None, "pause")
        assert health.readiness()[0] == ["ssh front not listening yet"]
        health.listening = True
        assert health.readiness() == ([], [])
        with sqlite3.connect(db) as conn:
            conn.execute(
                "CREATE TRIGGER poison BEFORE INSERT ON stream_events"
                " BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
            )
        log.record(rec("s1"))
        with pytest.raises(StreamLogError):
            await log.flush()
        reasons, _ = health.readiness()
        assert len(reasons) == 1 and "stream log not writable: disk says no" in reasons[0]
        conn.execute("DROP TRIGGER poison")
        conn.commit()
        conn.close()
        await log.flush()
        assert health.readiness() == ([], [])
