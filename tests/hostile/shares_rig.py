"""What the fair-share attacks measure: relay memory and descriptors, stream-log rows.

Figures come from /proc of the relay process and from its stream log file
(read-only), never from the relay's own word.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass

from tests.rigs.relay import Relay


@dataclass(frozen=True)
class Figures:
    rss_kib: int
    fds: int


def figures(relay: Relay) -> Figures:
    """The relay process's resident memory (VmRSS) and open descriptors now."""
    assert relay.proc is not None
    pid = relay.proc.pid
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return Figures(rss_kib=rss, fds=len(os.listdir(f"/proc/{pid}/fd")))


def rows(relay: Relay, where: str = "1", *params: object) -> int:
    """How many `streams` rows of the relay's stream log match `where`."""
    if not relay.db_path.exists():
        return 0
    uri = f"{relay.db_path.resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        (count,) = db.execute(f"SELECT count(*) FROM streams WHERE {where}", params).fetchone()
    return int(count)


def events(relay: Relay) -> int:
    """How many `stream_events` rows the relay's stream log holds."""
    if not relay.db_path.exists():
        return 0
    uri = f"{relay.db_path.resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        (count,) = db.execute("SELECT count(*) FROM stream_events").fetchone()
    return int(count)


def refused(relay: Relay, cause: str) -> int:
    """`refused` rows with this cause."""
    return rows(relay, "last_event = 'refused' AND close_reason = ?", cause)


def unanswered(relay: Relay) -> list[tuple[int, int]]:
    """(flows, bytes_up) of each `unanswered` record (its peer reads "unanswered flows: N")."""
    if not relay.db_path.exists():
        return []
    uri = f"{relay.db_path.resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        got = db.execute("SELECT peer, bytes_up FROM streams WHERE last_event = 'unanswered'")
        return [(int(str(peer).rsplit(" ", 1)[1]), int(up)) for peer, up in got.fetchall()]
