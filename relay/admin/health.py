"""Liveness and readiness of a relay, answered on the admin listener without a token.

Invariants:
- `/healthz` answers 200 while the process serves HTTP at all: it checks nothing else.
- `/readyz` answers 200 only when the SSH front listens, the stream log's last
  write succeeded and its folder is writable, and the billing API answered the
  last sync or `billing.offline = "continue"` lets traffic flow without it;
  otherwise 503 with the list of reasons. A note says when the offline policy
  is what keeps the relay ready.
- Both read state the relay keeps anyway; neither changes anything.
"""

from __future__ import annotations

import os

from quota.agent.sync import QuotaAgent
from relay.streamlog.writer import StreamLog


class RelayHealth:
    """What `/readyz` checks; the relay sets `listening` once its SSH front is up."""

    def __init__(self, streamlog: StreamLog, quota: QuotaAgent | None, offline: str) -> None:
        self.streamlog = streamlog
        self.quota = quota
        self.offline = offline
        self.listening = False

    def readiness(self) -> tuple[list[str], list[str]]:
        """(reasons not ready, notes); ready when the first list is empty."""
        reasons, notes = [], []
        if not self.listening:
            reasons.append("ssh front not listening yet")
        if self.streamlog.last_error is not None:
            reasons.append(f"stream log not writable: {self.streamlog.last_error}")
        elif not os.access(self.streamlog.path.parent, os.W_OK):
            reasons.append(f"stream log folder {self.streamlog.path.parent} not writable")
        if self.quota is not None and self.quota.offline:
            if self.offline == "continue":
                notes.append("billing API unreachable: offline policy 'continue' in force")
            else:
                reasons.append("billing API unreachable and billing.offline = 'pause'")
        return reasons, notes
