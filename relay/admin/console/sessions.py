"""Operator sessions of the relay's web view: in memory, hashed, bounded, expiring.

Invariants:
- A session is opened only by the admin token (compared in constant time) and
  kept by the SHA-256 of its random token; a restart of the relay ends all.
- At most `MAX_SESSIONS` live at once: opening one more forgets the oldest.
- A session ends at sign-out or `SESSION_TTL_MS` after it was opened.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict

from quota.webpages import new_token

SESSION_TTL_MS = 8 * 3_600_000
MAX_SESSIONS = 64


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class OperatorSessions:
    def __init__(self, admin_token: bytes) -> None:
        self._token = admin_token
        self._live: OrderedDict[str, int] = OrderedDict()  # hash -> expiry (monotonic ms)

    def open(self, given: str) -> str | None:
        """A new session token when `given` is the admin token, else None."""
        if not self._token or not hmac.compare_digest(given.encode(), self._token):
            return None
        session = new_token()
        self._live[_hash(session)] = _now_ms() + SESSION_TTL_MS
        while len(self._live) > MAX_SESSIONS:
            self._live.popitem(last=False)
        return session

    def valid(self, session: str) -> bool:
        key = _hash(session)
        expiry = self._live.get(key)
        if expiry is None:
            return False
        if expiry <= _now_ms():
            del self._live[key]
            return False
        return True

    def close(self, session: str) -> None:
        self._live.pop(_hash(session), None)
