"""The stream log writer and its queries, on real SQLite files."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from relay.streamlog.query import follow, last_event_id, list_streams, totals
from relay.streamlog.record import _MIGRATIONS, StreamRecord
from relay.streamlog.writer import StreamLog, StreamLogError

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_795_000_000_000  # a fixed epoch ms: 2026-11-18T11:06:40Z


def rec(stream_id: str, event: str = "open", at_ms: int = T0, **kw: Any) -> StreamRecord:
    """A record with defaults; `kw` overrides any field."""
    values: dict[str, Any] = {
        "tunnel_id": "acme/alice/tcp_endpoint/nas:22",
        "agent_id": "alice",
        "account": "acme",
        "relay_id": "r1",
        "kind": "tcp_endpoint",
        "peer": "support:bob@127.0.0.1:50123",
        "target": "nas:22",
        "opened_at_ms": T0,
        "bytes_up": 0,
        "bytes_down": 0,
        "bytes_dropped": 0,
        "pauses": 0,
        "paused_ms": 0,
        "state": "closed" if event == "close" else "open",
    }
    values.update(kw)
    return StreamRecord(event=event, at_ms=at_ms, stream_id=stream_id, **values)


async def poll(check: Callable[[], Awaitable[bool]], what: str, within_s: float = 5.0) -> None:
    """Wait until `check()` is true, failing with `what` after `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def event_rows(db: Path) -> list[tuple[Any, ...]]:
    """All stream_events rows as (id, event, stream_id, bytes_up, close_reason)."""
    with sqlite3.connect(db) as conn:
        query = "SELECT id, event, stream_id, bytes_up, close_reason FROM stream_events ORDER BY id"
        rows = conn.execute(query).fetchall()
    conn.close()
    return rows


async def test_flush_writes_the_batch_at_once(tmp_path: Path) -> None:
    """Records stay queued until a flush, which writes them all in one go."""
    db = tmp_path / "s.db"
    async with StreamLog(db, relay_id="r1", flush_ms=60_000) as log:
        for i in range(300):
            log.record(rec(f"s{i}"))
        assert (log.pending, log.written) == (300, 0)
        assert await list_streams(db) == []
        await log.flush()
        assert (log.pending, log.written) == (0, 300)
        assert len(await list_streams(db)) == 300
    assert len(event_rows(db)) == 300


async def test_flush_task_writes_within_the_interval(tmp_path: Path) -> None:
    """The background task flushes queued records every flush_ms without being asked."""
    db = tmp_path / "s.db"
    async with StreamLog(db, relay_id="r1", flush_ms=20) as log:
        log.record(rec("s1"))

        async def written() -> bool:
            return len(await list_streams(db)) == 1

        await poll(written, "the background flush")


async def test_exit_flushes_what_is_queued(tmp_path: Path) -> None:
    """Leaving the context writes every record still queued."""
    db = tmp_path / "s.db"
    async with StreamLog(db, relay_id="r1", flush_ms=60_000) as log:
        log.record(rec("s1"))
        log.record(rec("s1", "close", T0 + 5, bytes_up=7, close_reason="peer_closed"))
    assert log.written == 2
    [row] = await list_streams(db)
    assert (row["state"], row["bytes_up"], row["close_reason"]) == ("closed", 7, "peer_closed")


async def test_exit_completes_even_when_cancelled_again(tmp_path: Path) -> None:
    """A cancelled owner still flushes and closes the log, even if cancelled twice."""
    db = tmp_path / "s.db"
    entered = asyncio.Event()

    async def owner() -> None:
        async with StreamLog(db, relay_id="r1", flush_ms=60_000) as log:
            for i in range(2000):
                log.record(rec(f"s{i}"))
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(owner())
    await entered.wait()
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(event_rows(db)) == 2000


async def test_latest_state_wins(tmp_path: Path) -> None:
    """The streams row holds the latest cumulative figures; every record is an event."""
    db = tmp_path / "s.db"
    async with StreamLog(db, relay_id="r1", flush_ms=60_000) as log:
        log.record(rec("s1"))
        log.record(rec("s1", "interim", T0 + 1000, bytes_up=100, bytes_down=10))
        await log.flush()
        log.record(rec("s1", "pause", T0 + 2000, bytes_up=150, bytes_down=20, state="paused"))
        log.record(
            rec("s1", "resume", T0 + 7000, bytes_up=150, bytes_down=20, pauses=1, paused_ms=5000)
        )
        log.record(
            rec(
                "s1",
                "close",
                T0 + 9000,
                bytes_up=400,
                bytes_down=30,
                pauses=1,
                paused_ms=5000,
                close_reason="peer_closed",
            )
        )
    [row] = await list_streams(db)
    assert row["state"] == "closed"
    assert (row["bytes_up"], row["bytes_down"], row["pauses"], row["paused_ms"]) == (
        400,
        30,
        1,
        5000,
    )
    assert (row["opened_at_ms"], row["closed_at_ms"], row["last_event"]) == (
        T0,
        T0 + 9000,
        "close",
    )
    assert [r[1] for r in event_rows(db)] == ["open", "interim", "pause", "resume", "close"]


async def test_closed_stream_stays_closed(tmp_path: Path) -> None:
    """A record arriving after the close neither reopens the stream nor lowers its bytes."""
    db = tmp_path / "s.db"
    async with StreamLog(db, relay_id="r1") as log:
        log.record(rec("s1", "close", T0 + 10, bytes_up=50, close_reason="agent_closed"))
        log.record(rec("s1", "interim", T0 + 20, bytes_up=10))
    [row] = await list_streams(db)
    assert (row["state"], row["bytes_up"], row["close_reason"]) == ("closed", 50, "agent_closed")


async def test_counters_never_go_down(tmp_path: Path) -> None:
    """A stale interim with smaller counters does not lower the stored figures."""
    db = tmp_path / "s.db"
    async with StreamLog(db, relay_id="r1") as log:
        log.record(rec("s1", "interim", T0 + 20, bytes_up=500, pauses=2))
        log.record(rec("s1", "interim", T0 + 10, bytes_up=300, pauses=1))
    [row] = await list_streams(db)
    assert (row["bytes_up"], row["pauses"]) == (500, 2)


async def test_queue_bound_drops_oldest(tmp_path: Path) -> None:
    """Past max_pending queued records the oldest are dropped and counted as lost."""
    db = tmp_path / "s.db"
    async with StreamLog(db, relay_id="r1", flush_ms=60_000, max_pending=3) as log:
        for i in range(5):
            log.record(rec(f"s{i}"))
        assert (log.pending, log.lost) == (3, 2)
    assert [r["stream_id"] for r in await list_streams(db)] == ["s2", "s3", "s4"]


async def test_failed_flush_keeps_records_queued(tmp_path: Path) -> None:
    """A flush SQLite refuses raises StreamLogError, writes nothing, and keeps the batch."""
    db = tmp_path / "s.db"
    async with StreamLog(db, relay_id="r1", flush_ms=60_000) as log:
        with sqlite3.connect(db) as conn:
            conn.execute(
                "CREATE TRIGGER poison BEFORE INSERT ON stream_events"
                " WHEN new.stream_id = 'bad' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        log.record(rec("good"))
        log.record(rec("bad"))
        with pytest.raises(StreamLogError, match="write failed: refused"):
            await log.flush()
        assert (log.pending, log.written) == (2, 0)
        assert await list_streams(db) == []
        log.record(rec("later"))
        conn.execute("DROP TRIGGER poison")
        conn.commit()
        conn.close()
        await log.flush()
    assert [r[2] for r in event_rows(db)] == ["good", "bad", "later"]


_CRASHING_WRITER = """
import asyncio, sys
from pathlib import Path
from tests.relay.test_streamlog import T0, rec
from relay.streamlog.writer import StreamLog

async def main() -> None:
    log = StreamLog(Path(sys.argv[1]), relay_id="r1", flush_ms=60_000)
    await log.__aenter__()
    log.record(rec("live", bytes_up=0))
    log.record(rec("live", "pause", T0 + 10, bytes_up=123, bytes_down=45, state="paused"))
    log.record(rec("done", "close", T0 + 20, bytes_up=9, close_reason="peer_closed"))
    await log.flush()
    log.record(rec("unflushed"))
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_restart_after_sigkill_closes_leftovers(tmp_path: Path) -> None:
    """After a SIGKILL, the next start closes this relay's open streams as relay_restart."""
    db = tmp_path / "s.db"
    async with StreamLog(db, relay_id="r2") as other:
        other.record(rec("elsewhere", relay_id="r2", bytes_up=5))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CRASHING_WRITER, str(db), env=env, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 10)
    assert line == b"ready\n"
    proc.send_signal(signal.SIGKILL)
    assert await proc.wait() == -signal.SIGKILL

    async with StreamLog(db, relay_id="r1", clock_ms=lambda: T0 + 60_000) as log:
        assert log.written == 1
    rows = {r["stream_id"]: r for r in await list_streams(db)}
    assert set(rows) == {"live", "done", "elsewhere"}  # "unflushed" was never written
    live = rows["live"]
    assert (live["state"], live["close_reason"], live["closed_at_ms"]) == (
        "closed",
        "relay_restart",
        T0 + 60_000,
    )
    assert (live["bytes_up"], live["bytes_down"]) == (123, 45)
    assert (rows["done"]["close_reason"], rows["done"]["closed_at_ms"]) == ("peer_closed", T0 + 20)
    assert (rows["elsewhere"]["state"], rows["elsewhere"]["close_reason"]) == ("open", None)
    assert event_rows(db)[-1][1:] == ("close", "live", 123, "relay_restart")


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A log written by a newer program is not touched: opening it raises StreamLogError."""
    db = tmp_path / "s.db"
    async with StreamLog(db, relay_id="r1"):
        pass
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (99)")
    conn.close()
    with pytest.raises(StreamLogError, match="schema version 99 is newer"):
        async with StreamLog(db, relay_id="r1"):
            pass


async def test_queries_reject_missing_and_foreign_files(tmp_path: Path) -> None:
    """A missing file or a database that is no stream log is named in the error."""
    with pytest.raises(StreamLogError, match="stream log not found"):
        await list_streams(tmp_path / "missing.db")
    with sqlite3.connect(tmp_path / "other.db") as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(StreamLogError, match="not a stream log"):
        await totals(tmp_path / "other.db", by="agent")
    assert not (tmp_path / "missing.db").exists()


async def seed_mixed(db: Path) -> None:
    """Streams of two agents, two accounts, three tunnels, in every state."""
    async with StreamLog(db, relay_id="r1") as log:
        log.record(rec("a1", opened_at_ms=T0, bytes_up=10))
        paused = {
            "pauses": 2,
            "paused_ms": 700,
            "paused_quota_ms": 500,
            "paused_lease_wait_ms": 200,
        }
        log.record(
            rec("a1", "close", T0 + 1000, bytes_up=100, bytes_down=1, close_reason="x", **paused)
        )
        log.record(rec("a2", opened_at_ms=T0 + 2000, at_ms=T0 + 2000, bytes_up=20))
        a3 = {"opened_at_ms": T0 + 3000, "state": "paused", "pauses": 1, "pause_reason": "inactive"}
        log.record(rec("a3", "pause", T0 + 3000, **a3))
        bob = {
            "agent_id": "bob",
            "account": "beta",
            "tunnel_id": "beta/bob/udp_public/20001",
            "kind": "udp_public",
        }
        log.record(rec("b1", "open", T0 + 4000, opened_at_ms=T0 + 4000, **bob))
        log.record(rec("b1", "interim", T0 + 5000, opened_at_ms=T0 + 4000, bytes_dropped=64, **bob))
        log.record(rec("a4", "open", T0 + 6000, opened_at_ms=T0 + 6000, tunnel_id="acme/alice/t2"))


async def test_list_filters(tmp_path: Path) -> None:
    """Agent, account, tunnel, since, open, paused and limit each narrow the list."""
    db = tmp_path / "s.db"
    await seed_mixed(db)

    async def ids(**kw: Any) -> list[str]:
        return [r["stream_id"] for r in await list_streams(db, **kw)]

    assert await ids() == ["a1", "a2", "a3", "b1", "a4"]
    assert await ids(agent="bob") == ["b1"]
    assert await ids(account="acme") == ["a1", "a2", "a3", "a4"]
    assert await ids(tunnel="acme/alice/t2") == ["a4"]
    assert await ids(open_only=True) == ["a2", "a3", "b1", "a4"]
    assert await ids(paused_only=True) == ["a3"]
    assert await ids(since_ms=T0 + 1001) == ["a2", "a3", "b1", "a4"]  # a1 closed before
    assert await ids(since_ms=T0 + 1000) == ["a1", "a2", "a3", "b1", "a4"]
    assert await ids(limit=2) == ["b1", "a4"]
    assert await ids(agent="alice", open_only=True, limit=1) == ["a4"]


async def test_totals_equal_the_sum_of_streams(tmp_path: Path) -> None:
    """Per-agent and per-tunnel totals add up exactly to the streams they cover."""
    db = tmp_path / "s.db"
    rng = random.Random(7)
    async with StreamLog(db, relay_id="r1") as log:
        for i in range(60):
            agent = rng.choice(["alice", "bob", "carol"])
            tunnel = f"acme/{agent}/tcp_endpoint/t{rng.randrange(2)}"
            up = down = 0
            for n in range(rng.randrange(1, 5)):
                up += rng.randrange(10**9)
                down += rng.randrange(10**6)
                event = rng.choice(["interim", "pause", "close"]) if n else "open"
                state = {"pause": "paused", "close": "closed"}.get(event, "open")
                log.record(
                    rec(f"s{i}", event, T0 + n, agent_id=agent, tunnel_id=tunnel, state=state,
                        bytes_up=up, bytes_down=down, bytes_dropped=n, pauses=n, paused_ms=7 * n)
                )  # fmt: skip
    streams = await list_streams(db)
    for by, key in (("agent", "agent_id"), ("tunnel", "tunnel_id")):
        groups = await totals(db, by=by)  # type: ignore[arg-type]
        assert sum(g["streams"] for g in groups) == len(streams) == 60
        for g in groups:
            mine = [s for s in streams if s[key] == g[key]]
            for field in ("bytes_up", "bytes_down", "bytes_dropped", "pauses", "paused_ms"):
                assert g[field] == sum(s[field] for s in mine)
            assert g["bytes_total"] == g["bytes_up"] + g["bytes_down"]
            assert g["open_streams"] == sum(s["state"] != "closed" for s in mine)
        assert [g["bytes_total"] for g in groups] == sorted(
            (g["bytes_total"] for g in groups), reverse=True
        )


async def test_totals_use_the_same_filters(tmp_path: Path) -> None:
    """Filtered totals cover exactly the streams the same filters list."""
    db = tmp_path / "s.db"
    await seed_mixed(db)
    [alice] = await totals(db, by="agent", account="acme", open_only=True)
    assert (alice["agent_id"], alice["streams"], alice["bytes_up"]) == ("alice", 3, 20)
    tunnels = await totals(db, by="tunnel", agent="bob")
    assert [(t["tunnel_id"], t["kind"], t["bytes_dropped"]) for t in tunnels] == [
        ("beta/bob/udp_public/20001", "udp_public", 64)
    ]


async def test_follow_yields_new_events(tmp_path: Path) -> None:
    """follow starts at the end of the log and yields each new event once, in order."""
    db = tmp_path / "s.db"
    async with StreamLog(db, relay_id="r1", flush_ms=10) as log:
        log.record(rec("old"))
        await log.flush()
        got: list[tuple[str, str]] = []
        async with aclosing(follow(db, poll_ms=10)) as events:
            log.record(rec("new", "open", T0 + 1))
            log.record(rec("other", agent_id="bob"))
            log.record(rec("new", "close", T0 + 2, bytes_up=3, close_reason="peer_closed"))
            async for event in events:
                got.append((event["stream_id"], event["event"]))
                if len(got) == 3:
                    break
    assert got == [("new", "open"), ("other", "open"), ("new", "close")]


async def test_follow_starts_where_the_log_was_when_called(tmp_path: Path) -> None:
    """Events flushed after follow() is called but before the first anext are yielded."""
    db = tmp_path / "s.db"
    async with StreamLog(db, relay_id="r1", flush_ms=10) as log:
        log.record(rec("old"))
        await log.flush()
        async with aclosing(follow(db, poll_ms=10)) as events:
            log.record(rec("new", "open", T0 + 1))
            await log.flush()
            async with asyncio.timeout(5):
                first = await anext(events)
    assert (first["stream_id"], first["event"]) == ("new", "open")


async def test_follow_filters_and_replays_since(tmp_path: Path) -> None:
    """With since_ms follow replays from then; agent narrows it; after_id resumes."""
    db = tmp_path / "s.db"
    await seed_mixed(db)
    async with aclosing(follow(db, since_ms=T0 + 4000, agent="bob", poll_ms=10)) as events:
        first = await anext(events)
        second = await anext(events)
    assert [(e["stream_id"], e["event"]) for e in (first, second)] == [
        ("b1", "open"),
        ("b1", "interim"),
    ]
    last = await last_event_id(db)
    async with aclosing(follow(db, after_id=last - 1, poll_ms=10)) as events:
        assert (await anext(events))["id"] == last


async def test_json_lines_file(tmp_path: Path) -> None:
    """Each written record is one JSON line: stream_<event>, ISO time of at_ms, all fields."""
    db, lines = tmp_path / "s.db", tmp_path / "logs" / "s.jsonl"
    async with StreamLog(db, relay_id="r1", json_lines=lines) as log:
        log.record(rec("s1", at_ms=T0 + 5))
        log.record(rec("s1", "close", T0 + 1234, bytes_up=9, close_reason="peer_closed"))
    first, second = (json.loads(line) for line in lines.read_text().splitlines())
    assert first["event"] == "stream_open"
    assert first["timestamp"] == "2026-11-18T11:06:40.005Z"
    assert second["event"] == "stream_close"
    assert (second["at_ms"], second["bytes_up"], second["close_reason"]) == (
        T0 + 1234,
        9,
        "peer_closed",
    )
    expected = {f"{k}" for k in StreamRecord.__dataclass_fields__} - {"event"}
    assert set(second) == expected | {"event", "timestamp"}


async def test_json_lines_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """json_lines=Path("-") writes the same lines to stderr."""
    async with StreamLog(tmp_path / "s.db", relay_id="r1", json_lines=Path("-")) as log:
        log.record(rec("s1"))
    err = capsys.readouterr().err.splitlines()
    assert [json.loads(line)["event"] for line in err] == ["stream_open"]


async def test_a_log_of_the_first_schema_gains_the_pause_reason_fields(tmp_path: Path) -> None:
    """Opening a log written before pause reasons adds their columns; old rows read as 0."""
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(_MIGRATIONS[0])
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version (version) VALUES (1)")
        conn.execute(
            "INSERT INTO streams VALUES ('old', 't', 'alice', 'acme', 'r0', 'tcp_endpoint',"
            " 'p', 'nas:22', 1, 2, 2, 'close', 5, 6, 0, 1, 40, 'closed', 'done')"
        )
    conn.close()
    async with StreamLog(db, relay_id="r1") as log:
        log.record(rec("new", "pause", state="paused", pauses=1, pause_reason="lease_wait"))
    rows = {r["stream_id"]: r for r in await list_streams(db)}
    assert (rows["old"]["paused_ms"], rows["old"]["paused_quota_ms"]) == (40, 0)
    assert rows["old"]["pause_reason"] is None
    assert rows["new"]["pause_reason"] == "lease_wait"
