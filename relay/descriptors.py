"""Open-file descriptors: raise the limit at start, and survive running out of them.

Invariants:
- `raise_nofile` is called once at start, before any thread exists: the soft
  RLIMIT_NOFILE becomes the hard one, and `descriptor_limit` is what the gate
  caps connections below (minus `limits.descriptor_reserve`).
- Running out anyway (EMFILE on accept: a burst accepted before the gate
  closed the excess) never spins and never stops a listener.
  asyncio's loop then takes its listening socket off the selector for 1 s and
  reports each failed accept to the loop's exception handler: the handler
  installed here writes one `accept_out_of_descriptors` line per minute with
  the number suppressed, and passes every other report on. uvloop (libuv)
  closes a spare descriptor it keeps, accepts and closes the waiting
  connections, then takes the spare back: nothing is reported, nothing spins.
"""

from __future__ import annotations

import asyncio
import errno
import resource
import time
from typing import Any

import structlog

from quota.core.throttle import LogNow, LogThrottle

log = structlog.get_logger("relay")

_OUT_OF = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

# Listening sockets queue this many finished handshakes (the kernel caps it at
# net.core.somaxconn): a burst waits there, costing the relay no descriptor,
# instead of its SYNs being dropped and retried seconds later. The gate then
# accepts and drops the excess at once.
LISTEN_BACKLOG = 4096


def raise_nofile() -> int:
    """Raise the soft open-files limit to the hard one; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("nofile_not_raised", soft=soft, hard=hard, error=str(exc))
    return descriptor_limit()


def descriptor_limit() -> int:
    """The soft open-files limit in force (what this process may hold)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class AcceptErrors:
    """The loop's exception handler: accept failures for lack of descriptors, throttled."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.throttle = LogThrottle(interval_ms=60_000, max_keys=4)
        self.count = 0

    def install(self) -> None:
        self.loop.set_exception_handler(self)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not (isinstance(exc, OSError) and exc.errno in _OUT_OF):
            loop.default_exception_handler(context)
            return
        self.count += 1
        decision = self.throttle.note("accept", time.monotonic_ns() // 1_000_000)
        if isinstance(decision, LogNow):
            log.error(
                "accept_out_of_descriptors",
                error=errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                limit=descriptor_limit(),
                suppressed=decision.suppressed,
            )
