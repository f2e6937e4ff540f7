"""How every billing operation runs: one transaction, retried on conflict, announced after commit.

Invariants:
- Each operation runs in one transaction together with the record of its
  idempotency key (`once`): sent again, it is answered with the first answer
  and changes nothing; the same key with a different request is refused with
  409. The answer is kept as JSON and read back into its message type. A
  refusal (a 4xx `ClientError`) is kept as well, so a retry under the key is
  refused the same way even once the request could succeed (as Stripe does);
  only a 409 for the key itself and errors of the server (5xx) are not kept.
- A `VersionConflict` (a balance changed under us, or another replica held the
  database) rolls the whole operation back and runs it again, up to `RETRIES`,
  after a random pause that doubles up to `BACKOFF_CAP_S`, so transactions that
  collided do not collide again in step.
- A balance or counter that would pass its maximum (`OverLimit`, from anywhere
  in the operation) rolls it back and is answered `LimitExceeded` (409), never 500.
- Notices leave through the notifier, and push events through the push hub,
  only after their transaction committed (never from inside one), so a slow
  webhook or relay never holds a transaction and a rolled-back operation
  announces nothing. The events are also announced to the other replicas in
  the transaction itself (`Store.announce`), so they too hear of a commit only.
- An operation that granted a relay leases (a purchase while its streams wait)
  yields once after publishing, before it answers: the relays' senders, woken
  by the publish, write their events first, so the push that resumes those
  streams is on the wire before the HTTP answer, not after it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from quota.billing import repo
from quota.billing.auth import Principal
from quota.billing.clock import Clock
from quota.billing.config import BillingConfig
from quota.billing.errors import ClientError, KeyReused, LimitExceeded, Replayed, VersionConflict
from quota.billing.op import Notice, Op
from quota.billing.push import PushHub
from quota.billing.store import Store
from quota.contract import wire
from quota.core.money import OverLimit

RETRIES = 20
BACKOFF_CAP_S = 0.05
T = TypeVar("T")


def fingerprint(request: Any) -> str:
    """A digest of a request's JSON, the same for equal requests whatever the key order."""
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def body_of(message: Any) -> str:
    """The JSON text an answer is recorded as."""
    return json.dumps(wire.dump(message))


def read_body(cls: type[T], body: str) -> T:
    """An answer recorded by `body_of`, as its message again."""
    return wire.parse(cls, json.loads(body))


class Announcer:
    """Hands an operation's notices and push events on, once its transaction committed."""

    def __init__(self, notify: Callable[[Notice], None], push: PushHub) -> None:
        self._notify = notify
        self.push = push

    def committed(self, op: Op) -> None:
        for notice in op.notices:
            self._notify(notice)
        for event in op.events():
            self.push.publish(event, op.relay_leases)


class Runner:
    """Runs operations over one store, config and clock; each part of the service uses it."""

    def __init__(
        self, store: Store, config: BillingConfig, clock: Clock, announcer: Announcer
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self._announcer = announcer

    async def run(self, key: str, func: Callable[[Op], Awaitable[T]]) -> T:
        """Run `func` in a transaction, again from the start on a version conflict."""
        for attempt in range(RETRIES):
            try:
                async with self.store.transaction() as tx:
                    op = Op(tx=tx, now=self.clock.now_ms(), key=key, config=self.config)
                    result = await func(op)
                    for event in op.events():  # to the other replicas, if this commits
                        for payload in self._announcer.push.announcements(event):
                            self.store.announce(tx, payload)
            except VersionConflict:
                await asyncio.sleep(random.uniform(0, min(BACKOFF_CAP_S, 0.001 * 2**attempt)))
                continue
            except OverLimit as exc:
                raise LimitExceeded(str(exc)) from None
            self._announcer.committed(op)
            if op.relay_leases:  # streams wait for them: let the push go out before our answer
                await asyncio.sleep(0)
            return result
        raise VersionConflict(f"gave up after {RETRIES} conflicting attempts")

    async def once(
        self,
        who: Principal,
        key: str,
        request: tuple[str, Any],
        answer: type[T],
        func: Callable[[Op], Awaitable[T]],
    ) -> T:
        """Run `func` once per (principal, idempotency key); replay its first answer.

        `request` is the operation's name and the request's JSON: the same key
        with another of either is refused.
        """
        digest, scope = fingerprint(list(request)), who.scope()

        async def first(op: Op) -> T:
            found = await _replayed(op, scope, key, digest)
            if found is not None:
                return read_body(answer, found.body)
            result = await func(op)
            await repo.save_answer(
                op.tx, scope, key, repo.Answered(fingerprint=digest, body=body_of(result))
            )
            return result

        try:
            return await self.run(key, first)
        except (KeyReused, Replayed):
            raise
        except ClientError as exc:
            return await self._refused(scope, key, digest, answer, exc)

    async def _refused(
        self, scope: str, key: str, digest: str, answer: type[T], exc: ClientError
    ) -> T:
        """Keep a refusal under its key, in a transaction of its own, and answer it."""
        body = body_of(wire.ErrorBody(error=str(exc)))
        refused = repo.Answered(fingerprint=digest, status=exc.status, body=body)

        async def keep(op: Op) -> T | None:
            found = await _replayed(op, scope, key, digest)  # a concurrent request may have won
            if found is not None:
                return read_body(answer, found.body)
            await repo.save_answer(op.tx, scope, key, refused)
            return None

        kept = await self.run(key, keep)
        if kept is None:
            raise Replayed(exc.status, str(exc))
        return kept

    async def read(self, func: Callable[[Op], Awaitable[T]]) -> T:
        return await self.run("", func)


async def _replayed(op: Op, scope: str, key: str, digest: str) -> repo.Answered | None:
    """The answer kept under the key; a kept refusal is raised again (`Replayed`)."""
    found = await repo.find_answer(op.tx, scope, key)
    if found is not None and found.fingerprint != digest:
        raise KeyReused(f"idempotency key {key!r} was used for a different request")
    if found is not None and found.status >= 400:
        raise Replayed(found.status, read_body(wire.ErrorBody, found.body).error)
    return found
