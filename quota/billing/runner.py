"""How every billing operation runs: one transaction, retried on conflict, announced after commit.

Invariants:
- Each operation runs in one transaction together with the record of its
  idempotency key (`once`): sent again, it is answered with the first answer
  and changes nothing; the same key with a different request is refused with
  409. The answer is kept as JSON and read back into its message type.
- A `VersionConflict` (a balance changed under us, or another replica held the
  database) rolls the whole operation back and runs it again, up to `RETRIES`.
- Notices leave through the notifier, and push events through the push hub,
  only after their transaction committed (never from inside one), so a slow
  webhook or relay never holds a transaction and a rolled-back operation
  announces nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from quota.billing import repo
from quota.billing.auth import Principal
from quota.billing.clock import Clock
from quota.billing.config import BillingConfig
from quota.billing.errors import Conflict, VersionConflict
from quota.billing.op import Notice, Op
from quota.billing.push import PushHub
from quota.billing.store import Store
from quota.contract import wire

RETRIES = 20
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
            self.push.publish(event)


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
            except VersionConflict:
                await asyncio.sleep(0.001 * attempt)
                continue
            self._announcer.committed(op)
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
        digest = fingerprint(list(request))

        async def first(op: Op) -> T:
            found = await repo.find_answer(op.tx, who.scope(), key)
            if found is not None:
                if found.fingerprint != digest:
                    raise Conflict(f"idempotency key {key!r} was used for a different request")
                return read_body(answer, found.body)
            result = await func(op)
            await repo.save_answer(
                op.tx, who.scope(), key, repo.Answered(fingerprint=digest, body=body_of(result))
            )
            return result

        return await self.run(key, first)

    async def read(self, func: Callable[[Op], Awaitable[T]]) -> T:
        return await self.run("", func)
