"""Accounts and money in: creation, deposits and their intents, corrections, the ledger.

Invariants:
- A deposit is credited once per payment id (the payment id is its idempotency
  key): sent again it is answered with the first answer; the same id with
  another account or amount is refused with 409. A refused payment is not
  kept: sent again once it can be credited, it is (no payment is ever lost).
- A deposit below the amount its intent announced is held for review: noticed,
  not credited.
- A correction is a new ledger entry (signed amount and traffic), never an edit.
- Every other mutation is applied once per (principal, idempotency key).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from dataclasses import dataclass
from typing import Any

from quota.billing import lifecycle, repo
from quota.billing.auth import Principal, owned_account, owned_agent, token_hash
from quota.billing.errors import Conflict, NotFound, Unprocessable
from quota.billing.op import Notice, Op
from quota.billing.repo import AccountRow
from quota.billing.runner import Runner, body_of, read_body
from quota.contract import wire
from quota.core.billing import EntryKind
from quota.core.money import checked_add

MAX_INT, MAX_ITEMS = wire.MAX_INT, 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Audit:
    """An account's stored balances next to what its ledger entries add up to."""

    balance: int
    ledger_total: int  # sum of the account's entry amounts
    traffic: dict[str, int]  # agent id -> bucket and package bytes held
    # agent id -> sum of its entries' traffic bytes, less its open roll-up window's draws
    ledger_traffic: dict[str, int]


class Accounts:
    """Accounts, deposits, corrections and the ledger."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    async def create(
        self, who: Principal, key: str, req: wire.CreateAccountRequest
    ) -> wire.AccountCreated:
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

        return await self._runner.once(
            who, key, ("create_account", wire.dump(req)), wire.AccountCreated, run
        )

    async def get(self, who: Principal, account_id: str) -> wire.Account:
        async def run(op: Op) -> wire.Account:
            return (await owned_account(op, who, account_id)).to_wire()

        return await self._runner.read(run)

    async def deposit_intent(
        self, who: Principal, key: str, account_id: str, req: wire.DepositIntentRequest
    ) -> wire.DepositIntent:

        async def run(op: Op) -> wire.DepositIntent:
            await owned_account(op, who, account_id)
            intent = wire.DepositIntent(
                id="int_" + secrets.token_hex(8),
                account_id=account_id,
                amount=req.amount,
                created_at=op.now,
            )
            await repo.add_intent(op.tx, intent.id, account_id, intent.amount, op.now)
            return intent

        request = ("deposit_intent", [account_id, wire.dump(req)])
        return await self._runner.once(who, key, request, wire.DepositIntent, run)

    async def deposit(self, who: Principal, req: wire.DepositRequest) -> wire.DepositResult:
        """Credit a payment once per payment id (the payment id is the idempotency key)."""

        async def run(op: Op) -> wire.DepositResult:
            found = await repo.find_payment(op.tx, req.payment_id)
            if found is not None:
                if (found.account_id, found.amount) != (req.account_id, req.amount):
                    raise Conflict(
                        f"payment_id {req.payment_id!r} was already recorded with account "
                        f"{found.account_id} and amount {found.amount}"
                    )
                return read_body(wire.DepositResult, found.body)
            result = await self._credit(op, who, req)
            payment = repo.Payment(
                account_id=req.account_id, amount=req.amount, body=body_of(result)
            )
            await repo.save_payment(op.tx, req.payment_id, payment, status=result.status, at=op.now)
            return result

        return await self._runner.run(req.payment_id, run)

    async def _credit(self, op: Op, who: Principal, req: wire.DepositRequest) -> wire.DepositResult:
        account = await owned_account(op, who, req.account_id)
        if req.intent_id is not None:
            expected = await repo.intent_amount(op.tx, req.intent_id, req.account_id)
            if expected is None:
                raise NotFound(f"intent_id: no deposit intent {req.intent_id!r} on this account")
            if req.amount < expected:
                return await self._review(op, account, req, expected)
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

    @staticmethod
    async def _review(
        op: Op, account: AccountRow, req: wire.DepositRequest, expected: int
    ) -> wire.DepositResult:
        """Hold a deposit below its intent's amount for review: noticed, not credited."""
        await op.notice(
            account,
            "deposit_review",
            payment_id=req.payment_id,
            amount=req.amount,
            expected=expected,
        )
        return wire.DepositResult(
            status="review",
            payment_id=req.payment_id,
            amount=req.amount,
            entry=None,
            account=account.to_wire(),
            renewed=[],
        )

    async def correction(
        self, who: Principal, key: str, account_id: str, req: wire.CorrectionRequest
    ) -> wire.LedgerEntry:
        async def run(op: Op) -> wire.LedgerEntry:
            account = await owned_account(op, who, account_id)
            if req.agent_id is not None:
                await _correct_traffic(op, who, account_id, req)
            elif req.traffic_bytes:
                raise Unprocessable("traffic_bytes: needs agent_id")
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

        request = ("correction", [account_id, wire.dump(req)])
        return await self._runner.once(who, key, request, wire.LedgerEntry, run)

    async def ledger(
        self, who: Principal, account_id: str, *, after: int, limit: int, filters: dict[str, object]
    ) -> wire.LedgerPage:
        async def run(op: Op) -> wire.LedgerPage:
            await owned_account(op, who, account_id)
            rows = await repo.ledger_page(
                op.tx, account_id, after=after, limit=limit + 1, filters=filters
            )
            more = len(rows) > limit
            rows = rows[:limit]
            return wire.LedgerPage(entries=rows, next_cursor=rows[-1].id if more else None)

        return await self._runner.read(run)

    async def usage(self, who: Principal, query: repo.UsageFilter) -> wire.UsageSummary:
        """The account's usage in a time range, per agent and tunnel, from the raw reports."""

        async def run(op: Op) -> wire.UsageSummary:
            await owned_account(op, who, query.account_id)
            rows = await repo.usage_between(op.tx, query)
            if len(rows) > MAX_ITEMS:
                raise Conflict(
                    f"{len(rows)} tunnels used in this range, at most {MAX_ITEMS} are answered;"
                    " narrow it with since, until or agent_id"
                )
            tunnels = [
                wire.TunnelUsageTotal(
                    agent_id=a,
                    tunnel_id=t,
                    bytes=b,
                    tunnel_seconds=s,
                    reports=n,
                    first_at=lo,
                    last_at=hi,
                )
                for a, t, b, s, n, lo, hi in rows
            ]
            per_agent: dict[str, list[int]] = {}
            for u in tunnels:
                total = per_agent.setdefault(u.agent_id, [0, 0])
                total[0] = checked_add(total[0], u.bytes, what="an agent's usage", limit=MAX_INT)
                total[1] = checked_add(
                    total[1], u.tunnel_seconds, what="an agent's tunnel seconds", limit=MAX_INT
                )
            agents = [
                wire.AgentUsageTotal(agent_id=a, bytes=b, tunnel_seconds=s)
                for a, (b, s) in per_agent.items()
            ]
            nbytes = seconds = 0
            for t in agents:
                nbytes = checked_add(nbytes, t.bytes, what="the account's usage", limit=MAX_INT)
                seconds = checked_add(
                    seconds, t.tunnel_seconds, what="the account's tunnel seconds", limit=MAX_INT
                )
            return wire.UsageSummary(
                account_id=query.account_id,
                since=query.since,
                until=query.until,
                agents=agents,
                tunnels=tunnels,
                bytes=nbytes,
                tunnel_seconds=seconds,
            )

        return await self._runner.read(run)

    async def webhook_deliveries(
        self, who: Principal, account_id: str, *, after: int, limit: int
    ) -> wire.WebhookDeliveryPage:
        """The account's notices oldest first, each with its delivery state and attempts."""

        async def run(op: Op) -> wire.WebhookDeliveryPage:
            await owned_account(op, who, account_id)
            rows = await repo.webhooks.notices_page(op.tx, account_id, after, limit + 1)
            more = len(rows) > limit
            rows = rows[:limit]
            return wire.WebhookDeliveryPage(
                deliveries=[_delivery(r) for r in rows],
                next_cursor=rows[-1].id if more else None,
            )

        return await self._runner.read(run)

    async def redeliver_webhook(
        self, who: Principal, account_id: str, event_id: str
    ) -> wire.WebhookDelivery:
        """Queue a failed (or never sent) notice again, due now, with a fresh round of retries."""

        async def run(op: Op) -> wire.WebhookDelivery:
            await owned_account(op, who, account_id)
            row = await repo.webhooks.find_notice(op.tx, account_id, event_id)
            if row is None:
                raise NotFound(f"no webhook notice {event_id!r}")
            if not op.config.webhook_url:
                raise Conflict("no webhook is configured (notifications.webhook_url)")
            if row.state == repo.webhooks.DELIVERED:
                raise Conflict(f"notice {event_id!r} was delivered already")
            if row.state != repo.webhooks.PENDING:
                await repo.webhooks.requeue(op.tx, row.id)
                row = dataclasses.replace(row, state=repo.webhooks.PENDING, attempts=0, next_at=0)
            op.notices.append(Notice(account_id=account_id, kind=row.kind, payload=_body(row)))
            return _delivery(row)

        return await self._runner.run("", run)

    async def audit(self, account_id: str) -> Audit:
        """Balance, ledger sum, each agent's traffic and its ledger sum (for invariant checks)."""

        async def run(op: Op) -> Audit:
            account = await repo.get_account(op.tx, account_id)
            if account is None:
                raise NotFound(f"no account {account_id!r}")
            total, traffic = await repo.sums(op.tx, account_id)
            agents = await repo.agents_of(op.tx, account_id)
            for agent in agents:  # draws of an open roll-up window are not in the ledger yet
                if agent.open_used:
                    traffic[agent.id] = traffic.get(agent.id, 0) - agent.open_used
            return Audit(
                balance=account.balance,
                ledger_total=total,
                traffic={a.id: a.traffic for a in agents},
                ledger_traffic=traffic,
            )

        return await self._runner.read(run)


def _body(row: repo.Outgoing) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(row.payload)
    return body


def _delivery(row: repo.Outgoing) -> wire.WebhookDelivery:
    pending = row.state == repo.webhooks.PENDING
    return wire.WebhookDelivery(
        id=row.event_id,
        kind=row.kind,
        at=row.at,
        state=row.state,  # type: ignore[arg-type]  # the column holds only the four states
        attempts=row.attempts,
        next_attempt_at=row.next_at if pending else None,
        delivered_at=row.delivered_at,
        last_error=row.last_error,
    )


async def _correct_traffic(
    op: Op, who: Principal, account_id: str, req: wire.CorrectionRequest
) -> None:
    """Move a correction's traffic bytes onto the agent it names (one of this account's)."""
    assert req.agent_id is not None
    _, agent = await owned_agent(op, who, req.agent_id)
    if agent.account_id != account_id:
        raise NotFound(f"agent_id: no agent {req.agent_id!r} on this account")
    if agent.package_bytes + req.traffic_bytes < 0:
        raise Conflict("traffic_bytes: would make the agent's traffic negative")
    await repo.save_agent(
        op.tx, dataclasses.replace(agent, package_bytes=agent.package_bytes + req.traffic_bytes)
    )
