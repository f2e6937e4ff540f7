"""Webhook delivery from the outbox: signed POSTs, in order, retried with backoff, durable.

Invariants:
- A notice is in the outbox (`notices`, state `pending`) from its operation's
  commit on; this task only reads it from there, so a notice outlives a restart
  or a SIGKILL of the billing process and is delivered after it.
- Notices go out one at a time, oldest first: a later notice waits while an
  earlier one is retried, so a receiver sees them in the order they were made.
  Each is delivered at least once; its `id` (also the `Quotarelay-Event-Id`
  header) lets a receiver drop a repeat (a process killed after the receiver
  answered but before `delivered` was written sends it again).
- Every attempt is claimed in the database before it is made (`repo.webhooks.claim`),
  so replicas sharing a database never make the same attempt twice.
- A failed attempt is retried after `quota.core.backoff` (doubling from
  `backoff_first_ms` up to `backoff_max_ms`, jittered); after `retries`
  retries the notice is `failed` and kept, visible in the deliveries API.
- Every POST carries `Quotarelay-Signature` (`quota.billing.webhooks`), signed
  at the attempt's own wall-clock time. Redirects are not followed; any status
  outside 2xx is a failed attempt.
- `submit` never blocks and never raises: it logs `billing_notice` and wakes
  the task. aiohttp and store errors never leave this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from types import TracebackType

import aiohttp
import structlog

from quota.billing import repo
from quota.billing.errors import NotifyError, StoreError, VersionConflict
from quota.billing.op import Notice
from quota.billing.repo import Outgoing
from quota.billing.store import Store
from quota.billing.webhooks import EVENT_HEADER, SIGNATURE_HEADER, sign
from quota.core.backoff import backoff_ms

log = structlog.get_logger("quota.billing")

BATCH = 100  # notices read per look at the outbox
POLL_MS = 5_000  # look again this often anyway: other replicas' notices, lapsed claims
CLAIM_MARGIN_MS = 5_000  # a claim outlives its attempt's timeout by this much
MAX_ERROR = 500  # characters of an attempt's error kept with the notice


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Notifier:
    """Use as `async with Notifier(store, url, secret)`: the task lives as long as the block."""

    def __init__(
        self,
        store: Store,
        url: str | None,
        secret: str = "",
        *,
        retries: int = 20,
        timeout_ms: int = 5000,
        backoff_max_ms: int = 3_600_000,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        self.store = store
        self.url = url
        self.secret = secret
        self.retries = retries
        self.timeout_ms = timeout_ms
        self.backoff_first_ms = 1000
        self.backoff_max_ms = backoff_max_ms
        self.clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Notifier:
        if self.url is not None:
            timeout = aiohttp.ClientTimeout(total=self.timeout_ms / 1000)
            self._session = aiohttp.ClientSession(timeout=timeout)
            self._task = asyncio.create_task(self._worker(), name="billing-notifier")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    def submit(self, notice: Notice) -> None:
        """A notice was committed to the outbox: log it and look at the outbox now."""
        log.info(
            "billing_notice",
            account_id=notice.account_id,
            notice=notice.kind,
            event_id=notice.payload.get("id"),
        )
        self.wake()

    def wake(self) -> None:
        """Look at the outbox now rather than at the next poll."""
        self._wake.set()

    async def _worker(self) -> None:
        while True:
            self._wake.clear()
            try:
                wait_ms = await self._deliver_due()
            except (StoreError, VersionConflict) as exc:
                log.warning("billing_outbox_error", error=str(exc))
                wait_ms = POLL_MS
            except Exception as exc:  # a bug must not stop every later delivery: log, go on
                log.exception("billing_outbox_error", error=repr(exc))
                wait_ms = POLL_MS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_ms / 1000)

    async def _deliver_due(self) -> int:
        """Deliver the due notices in order; return how long to wait before looking again."""
        while True:
            async with self.store.transaction() as tx:
                head = await repo.webhooks.pending_head(tx, BATCH)
            for notice in head:
                now = self.clock()
                if notice.next_at > now:
                    return min(POLL_MS, notice.next_at - now)
                if not await self._attempt(notice):
                    break  # to be retried, or claimed elsewhere: read the head's new next_at
            else:
                if len(head) < BATCH:
                    return POLL_MS

    async def _attempt(self, notice: Outgoing) -> bool:
        """One claimed attempt; True when the notice left the head of the queue."""
        async with self.store.transaction() as tx:
            until = self.clock() + self.timeout_ms + CLAIM_MARGIN_MS
            if not await repo.webhooks.claim(tx, notice, until):
                return False
        try:
            await self._post(notice)
        except NotifyError as exc:
            return await self._failed(notice, str(exc)[:MAX_ERROR])
        async with self.store.transaction() as tx:
            await repo.webhooks.delivered(tx, notice.id, self.clock())
        log.info(
            "billing_notice_delivered",
            account_id=notice.account_id,
            notice=notice.kind,
            event_id=notice.event_id,
            attempts=notice.attempts + 1,
        )
        return True

    async def _failed(self, notice: Outgoing, error: str) -> bool:
        attempt = notice.attempts  # this attempt's number, 0 for the first
        next_at: int | None = None
        if attempt < self.retries:
            wait = backoff_ms(
                attempt,
                first_ms=self.backoff_first_ms,
                cap_ms=self.backoff_max_ms,
                draw=random.random(),
            )
            next_at = self.clock() + wait
        async with self.store.transaction() as tx:
            await repo.webhooks.attempt_failed(tx, notice.id, error, next_at)
        fields = {"account_id": notice.account_id, "notice": notice.kind, "error": error}
        if next_at is None:
            log.error("billing_notice_failed", event_id=notice.event_id, **fields)
            return True
        log.warning("billing_notice_retry", event_id=notice.event_id, attempt=attempt, **fields)
        return False

    async def _post(self, notice: Outgoing) -> None:
        assert self._session is not None and self.url is not None
        body = notice.payload.encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, body, self.clock() // 1000),
            EVENT_HEADER: notice.event_id,
        }
        try:
            async with self._session.post(
                self.url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                if not 200 <= resp.status < 300:
                    raise NotifyError(f"webhook answered {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NotifyError(f"webhook unreachable: {exc!r}") from exc
