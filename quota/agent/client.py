"""The billing API client of a relay: sync reports, the agent registry, the push channel.

Invariants:
- Every call has an explicit, short timeout; aiohttp's 300 s default would
  stall a sync for minutes.
- A report is encoded once (`encode_report`), stored, and sent as stored: a
  resend is byte-identical to the first send.
- Nothing aiohttp raises leaves this module: a refused connection, a timeout, a
  5xx, a 4xx or an answer that does not parse as its wire message all become
  `BillingUnavailable` with a message saying which.
- Several URLs are replicas of one billing API: a call goes to the one that
  answered last; when it cannot be reached, times out or answers 5xx, the
  same request goes to the next, each at most once per call. Every call is
  safe to repeat (a report is applied once per seq whichever replica gets it).
  A 4xx or a malformed answer is not the replica's fault: no failover.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import TypeVar

import aiohttp
import msgspec

from quota.agent.errors import BillingUnavailable
from quota.contract import wire
from quota.core.sync import Report

T = TypeVar("T")
_JSON = {"Content-Type": "application/json"}


def encode_report(report: Report) -> bytes:
    """The numbered report as the `/v1/sync` body it will be sent as, every time."""
    message = wire.SyncRequest(
        seq=report.seq,
        items=[
            wire.SyncItem(
                agent_id=i.agent_id,
                tunnel_id=i.tunnel_id,
                bytes=i.bytes,
                tunnel_seconds=i.tunnel_seconds,
            )
            for i in report.items
        ],
        leases=[
            wire.LeaseRequest(agent_id=a.agent_id, want=a.want, returned=a.returned)
            for a in report.leases
        ],
    )
    return json.dumps(wire.dump(message)).encode()


class _Down(BillingUnavailable):
    """This replica could not answer (unreachable, timeout, 5xx): try the next one."""


class BillingClient:
    def __init__(self, urls: str | Sequence[str], token: str, *, timeout_s: float = 5.0) -> None:
        given = [urls] if isinstance(urls, str) else list(urls)
        self.urls = [u.rstrip("/") for u in given]
        if not self.urls:
            raise ValueError("a billing client needs at least one URL")
        self._at = 0  # the replica that answered last
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(2.0, timeout_s))
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> BillingClient:
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use BillingClient as an async context manager"
        return self._session

    @property
    def url(self) -> str:
        """The replica calls go to first."""
        return self.urls[self._at]

    @url.setter
    def url(self, value: str) -> None:
        self.urls[self._at] = value.rstrip("/")

    async def _call(self, method: str, path: str, cls: type[T], body: bytes | None = None) -> T:
        """The call on the current replica, then on each other one while replicas are down."""
        for _ in range(len(self.urls) - 1):
            try:
                return await self._call_one(method, path, cls, body)
            except _Down:
                self._at = (self._at + 1) % len(self.urls)
        return await self._call_one(method, path, cls, body)

    async def _call_one(self, method: str, path: str, cls: type[T], body: bytes | None) -> T:
        url = self.url + path
        headers = None if body is None else _JSON
        try:
            async with self.session.request(method, url, data=body, headers=headers) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    text = raw.decode("utf-8", "replace")[:200]
                    if resp.status >= 500:
                        raise _Down(f"{method} {url}: HTTP {resp.status}: {text}")
                    raise BillingUnavailable(f"{method} {path}: HTTP {resp.status}: {text}")
        except BillingUnavailable:
            raise
        except TimeoutError:
            raise _Down(f"{method} {url}: no answer in time") from None
        except aiohttp.ClientError as exc:
            raise _Down(f"{method} {url}: {type(exc).__name__}: {exc}") from None
        # a sync answer of 10,000 leases is 1.5 MB: straight into the message with
        # msgspec; only what that refuses is decoded again, for the message saying why
        with contextlib.suppress(msgspec.DecodeError):
            return msgspec.json.decode(raw, type=cls)
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise BillingUnavailable(f"{method} {path}: answer is not JSON: {exc}") from None
        try:
            return wire.parse(cls, data)
        except wire.WireError as exc:
            raise BillingUnavailable(f"{method} {path}: malformed answer: {exc}") from None

    async def sync(self, body: bytes) -> wire.SyncAnswer:
        """Post one encoded report (see `encode_report`), exactly as stored."""
        return await self._call("POST", "/v1/sync", wire.SyncAnswer, body)

    async def relay_agents(self) -> wire.RelayAgentList:
        return await self._call("GET", "/v1/relay/agents", wire.RelayAgentList)

    async def events(self) -> AsyncIterator[wire.PushEvent]:
        """Push events until the channel closes; raises BillingUnavailable if it cannot open.

        It opens on the current replica; if that fails, the next attempt tries the next one.
        """
        try:
            async with self.session.ws_connect(
                self.url + "/v1/relay/events",
                heartbeat=10,
                timeout=aiohttp.ClientWSTimeout(ws_close=5),
            ) as ws:
                async for msg in ws:
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        break
                    try:
                        yield wire.parse(wire.PushEvent, json.loads(msg.data))
                    except (ValueError, wire.WireError):
                        continue  # a garbled event is skipped; the next sync corrects all
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._at = (self._at + 1) % len(self.urls)
            raise BillingUnavailable(f"push channel: {type(exc).__name__}: {exc}") from None
