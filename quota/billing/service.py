"""The billing operations: who may do what, idempotency, retries, then the charge rules.

Invariants:
- Each mutation runs in one transaction together with the record of its
  idempotency key (or payment id, or relay report number): sent again, it is
  answered with the first answer and changes nothing; the same key with a
  different request is refused with 409.
- A `VersionConflict` (a balance changed under us, or another replica held the
  database) rolls the whole operation back and runs it again, up to `RETRIES`.
- An account token only ever reaches its own account: other ids are 404.
- Notices leave through the notifier, and push events through the push hub,
  only after their transaction committed (never from inside one).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from quota.billing import lifecycle, repo
from quota.billing.clock import Clock
from quota.billing.config import BillingConfig
from quota.billing.errors import BadRequest, Conflict, NotFound, VersionConflict
from quota.billing.op import Notice, Op
from quota.billing.push import PushHub
from quota.billing.repo import AccountRow, AgentRow
from quota.billing.store import Store
from quota.contract import wire
from quota.core.billing import EntryKind

RETRIES = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    kind: str  # admin, account, relay
    id: str = ""

    def scope(self) -> str:
        return f"{self.kind}:{self.id}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _fingerprint(request: Any) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


class Service:
    """All billing operations over one store, one config and one clock."""

    def __init__(
        self,
        store: Store,
        config: BillingConfig,
        clock: Clock,
        notify: Callable[[Notice], None] = lambda _: None,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self._notify = notify
        self.push = PushHub()

    async def _run(self, key: str, func: Callable[[Op], Awaitable[Any]]) -> Any:
        for attempt in range(RETRIES):
            try:
                async with self.store.transaction() as tx:
                    op = Op(tx=tx, now=self.clock.now_ms(), key=key, config=self.config)
                    result = await func(op)
            except VersionConflict:
                await asyncio.sleep(0.001 * attempt)
                continue
            for notice in op.notices:
                self._notify(notice)
            for event in op.events():
                self.push.publish(event)
            return result
        raise VersionConflict(f"gave up after {RETRIES} conflicting attempts")

    async def mutate(
        self, who: Principal, key: str, request: Any, func: Callable[[Op], Awaitable[Any]]
    ) -> Any:
        """Run `func` once per (principal, idempotency key); replay its first answer."""
        fingerprint = _fingerprint([func.__qualname__, request])

        async def once(op: Op) -> Any:
            row = await op.tx.one(
                "SELECT fingerprint, body FROM idempotency WHERE scope = ? AND key = ?",
                (who.scope(), key),
            )
            if row is not None:
                if row[0] != fingerprint:
                    raise Conflict(f"idempotency key {key!r} was used for a different request")
                return json.loads(row[1])
            body = wire.dump(await func(op))
            await op.tx.run(
                "INSERT INTO idempotency (scope, key, fingerprint, status, body)"
                " VALUES (?, ?, ?, 200, ?)",
                (who.scope(), key, fingerprint, json.dumps(body)),
            )
            return body

        return await self._run(key, once)

    async def read(self, func: Callable[[Op], Awaitable[Any]]) -> Any:
        return wire.dump(await self._run("", func))

    # -- lookups that enforce ownership -------------------------------------------------

    @staticmethod
    async def account(op: Op, who: Principal, account_id: str) -> AccountRow:
        account = await repo.get_account(op.tx, account_id)
        if account is None or (who.kind == "account" and who.id != account_id):
            raise NotFound(f"no account {account_id!r}")
        return account

    @staticmethod
    async def agent(op: Op, who: Principal, agent_id: str) -> tuple[AccountRow, AgentRow]:
        agent = await repo.get_agent(op.tx, agent_id)
        if agent is None or (who.kind == "account" and who.id != agent.account_id):
            raise NotFound(f"no agent {agent_id!r}")
        account = await repo.get_account(op.tx, agent.account_id)
        assert account is not None  # a foreign key guarantees it
        return account, agent

    async def principal_for(self, token: str) -> Principal | None:
        given = token.encode()
        if secrets.compare_digest(given, self.config.admin_token.encode()):
            return Principal(kind="admin")
        for relay in self.config.relays:
            if secrets.compare_digest(given, relay.token.encode()):
                return Principal(kind="relay", id=relay.id)
        async with self.store.reading() as tx:
            account_id = await repo.account_id_by_token(tx, token_hash(token))
        return Principal(kind="account", id=account_id) if account_id else None

    # -- accounts and deposits --------------------------------------------------------

    async def create_account(self, who: Principal, key: str, req: wire.CreateAccountRequest) -> Any:
        async def run(op: Op) -> wire.AccountCreated:
            token = "qra_" + secrets.token_urlsafe(32)
            row = AccountRow(
                id="acc_" + secrets.token_hex(8),
                name=req.name,
                balance=0,
                version=0,
                frozen=False,
                frozen_reason=None,
                low_notice_at=None,
                created_at=op.now,
            )
            await repo.create_account(op.tx, row, token_hash(token))
            return wire.AccountCreated(account=row.to_wire(), token=token)

        return await self.mutate(who, key, wire.dump(req), run)

    async def get_account(self, who: Principal, account_id: str) -> Any:
        async def run(op: Op) -> wire.Account:
            return (await self.account(op, who, account_id)).to_wire()

        return await self.read(run)

    async def deposit_intent(
        self, who: Principal, key: str, account_id: str, req: wire.DepositIntentRequest
    ) -> Any:
        if req.amount <= 0:
            raise BadRequest("amount: must be more than zero millicoins")

        async def run(op: Op) -> wire.DepositIntent:
            await self.account(op, who, account_id)
            intent = wire.DepositIntent(
                id="int_" + secrets.token_hex(8),
                account_id=account_id,
                amount=req.amount,
                created_at=op.now,
            )
            await op.tx.run(
                "INSERT INTO deposit_intents (id, account_id, amount, created_at) VALUES (?,?,?,?)",
                (intent.id, account_id, intent.amount, op.now),
            )
            return intent

        return await self.mutate(who, key, [account_id, wire.dump(req)], run)

    async def deposit(self, who: Principal, req: wire.DepositRequest) -> Any:
        """Credit a payment once per payment id (the payment id is the idempotency key)."""
        if req.amount <= 0:
            raise BadRequest("amount: must be more than zero millicoins")

        async def run(op: Op) -> Any:
            row = await op.tx.one(
                "SELECT account_id, amount, body FROM payments WHERE payment_id = ?",
                (req.payment_id,),
            )
            if row is not None:
                if (row[0], row[1]) != (req.account_id, req.amount):
                    raise Conflict(
                        f"payment_id {req.payment_id!r} was already recorded with account "
                        f"{row[0]} and amount {row[1]}"
                    )
                return json.loads(row[2])
            result = await self._credit(op, who, req)
            body = wire.dump(result)
            await op.tx.run(
                "INSERT INTO payments (payment_id, account_id, amount, status, body, at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    req.payment_id,
                    req.account_id,
                    req.amount,
                    result.status,
                    json.dumps(body),
                    op.now,
                ),
            )
            return body

        return await self._run(req.payment_id, run)

    async def _credit(self, op: Op, who: Principal, req: wire.DepositRequest) -> wire.DepositResult:
        account = await self.account(op, who, req.account_id)
        if req.intent_id is not None:
            intent = await op.tx.one(
                "SELECT amount FROM deposit_intents WHERE id = ? AND account_id = ?",
                (req.intent_id, req.account_id),
            )
            if intent is None:
                raise NotFound(f"intent_id: no deposit intent {req.intent_id!r} on this account")
            if req.amount < intent[0]:
                await op.notice(
                    account,
                    "deposit_review",
                    payment_id=req.payment_id,
                    amount=req.amount,
                    expected=intent[0],
                )
                return wire.DepositResult(
                    status="review",
                    payment_id=req.payment_id,
                    amount=req.amount,
                    entry=None,
                    account=account.to_wire(),
                    renewed=[],
                )
        account = await op.post(
            account,
            repo.Posting(
                kind=EntryKind.DEPOSIT,
                amount=req.amount,
                reason=f"deposit {req.payment_id}",
            ),
        )
        entry = op.entries[-1]
        await op.changed_account(account.id, "deposit")
        account, renewed = await lifecycle.after_deposit(op, account)
        return wire.DepositResult(
            status="credited",
            payment_id=req.payment_id,
            amount=req.amount,
            entry=entry,
            account=account.to_wire(),
            renewed=renewed,
        )

    async def correction(
        self, who: Principal, key: str, account_id: str, req: wire.CorrectionRequest
    ) -> Any:
        async def run(op: Op) -> wire.LedgerEntry:
            account = await self.account(op, who, account_id)
            agent = None
            if req.agent_id is not None:
                _, agent = await self.agent(op, who, req.agent_id)
                if agent.account_id != account_id:
                    raise NotFound(f"agent_id: no agent {req.agent_id!r} on this account")
                if agent.package_bytes + req.traffic_bytes < 0:
                    raise BadRequest("traffic_bytes: would make the agent's traffic negative")
                await repo.save_agent(
                    op.tx,
                    dataclasses.replace(
                        agent, package_bytes=agent.package_bytes + req.traffic_bytes
                    ),
                )
            elif req.traffic_bytes:
                raise BadRequest("traffic_bytes: needs agent_id")
            await op.changed_account(account_id, "correction")
            await op.post(
                account,
                repo.Posting(
                    kind=EntryKind.CORRECTION,
                    amount=req.amount,
                    agent_id=req.agent_id,
                    traffic_bytes=req.traffic_bytes,
                    reason=req.reason,
                ),
            )
            return op.entries[-1]

        return await self.mutate(who, key, [account_id, wire.dump(req)], run)

    async def ledger(
        self, who: Principal, account_id: str, *, after: int, limit: int, filters: dict[str, object]
    ) -> Any:
        async def run(op: Op) -> wire.LedgerPage:
            await self.account(op, who, account_id)
            rows = await repo.ledger_page(
                op.tx, account_id, after=after, limit=limit + 1, filters=filters
            )
            more = len(rows) > limit
            rows = rows[:limit]
            return wire.LedgerPage(entries=rows, next_cursor=rows[-1].id if more else None)

        return await self.read(run)
