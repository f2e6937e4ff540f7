"""Notices to a webhook, sent by a background task the app owns.

Invariants:
- `submit` never blocks and never raises: billing hands a notice over after its
  transaction committed and goes on. Every notice is also logged as a structlog
  event (`billing_notice`), the event log of record.
- Each notice is POSTed as JSON; a failed delivery is retried with exponential
  backoff up to `retries` times, then dropped with a `billing_notice_failed` log.
- aiohttp errors never leave this module.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

import aiohttp
import structlog

from quota.billing.errors import NotifyError
from quota.billing.op import Notice
from quota.core.backoff import backoff_ms

log = structlog.get_logger("quota.billing")

_QUEUE_MAX = 10_000


class Notifier:
    """Use as `async with Notifier(url, ...)`; the task lives as long as the block."""

    def __init__(
        self, url: str | None, *, retries: int = 5, timeout_ms: int = 5000, backoff_s: float = 0.2
    ) -> None:
        self.url = url
        self.retries = retries
        self.timeout = aiohttp.ClientTimeout(total=timeout_ms / 1000)
        self.backoff_s = backoff_s
        self._queue: asyncio.Queue[Notice] = asyncio.Queue(_QUEUE_MAX)
        self._task: asyncio.Task[None] | None = None
        self._busy = 0  # 1 while a notice is being delivered
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Notifier:
        if self.url is not None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
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

    @property
    def pending(self) -> int:
        """Notices queued or being delivered, not yet delivered or given up."""
        return self._queue.qsize() + self._busy

    def submit(self, notice: Notice) -> None:
        log.info("billing_notice", account_id=notice.account_id, notice=notice.kind)
        if self._task is None:
            return
        try:
            self._queue.put_nowait(notice)
        except asyncio.QueueFull:
            log.warning("billing_notice_dropped", account_id=notice.account_id, notice=notice.kind)

    async def _worker(self) -> None:
        while True:
            notice = await self._queue.get()
            self._busy = 1
            try:
                await self._deliver(notice)
            finally:
                self._busy = 0

    async def _deliver(self, notice: Notice) -> None:
        for attempt in range(self.retries + 1):
            try:
                await self._post(notice)
                return
            except NotifyError as exc:
                log.warning(
                    "billing_notice_retry", notice=notice.kind, attempt=attempt, error=str(exc)
                )
                wait_ms = backoff_ms(
                    attempt, first_ms=round(self.backoff_s * 1000), jitter=0, draw=0
                )
                await asyncio.sleep(wait_ms / 1000)
        log.error("billing_notice_failed", account_id=notice.account_id, notice=notice.kind)

    async def _post(self, notice: Notice) -> None:
        assert self._session is not None and self.url is not None
        try:
            async with self._session.post(self.url, json=notice.payload) as resp:
                if resp.status >= 300:
                    raise NotifyError(f"webhook answered {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NotifyError(f"webhook unreachable: {exc!r}") from exc
