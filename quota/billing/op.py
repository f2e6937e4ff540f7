"""One billing operation's context, and the rules every charge shares.

Invariants:
- `Op.post` is the only way a balance or an agent's traffic changes: one ledger
  entry for each change, in the operation's transaction.
- Notices are written to the webhook outbox in the operation's transaction,
  so a notice exists exactly when its operation committed; notices and push
  events (`changed`) are handed to the notifier (a wake-up) and the push hub
  by the runner after the commit, so a slow webhook or
  relay never holds a transaction and a rolled-back operation announces nothing.
  Leases an operation granted a relay (`relay_leases`) ride on its events to
  that relay alone.
- A low-balance notice goes out at most once per configured interval, when an
  automatic charge leaves the balance below twice the monthly plan total.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from quota.billing import repo
from quota.billing.config import BillingConfig
from quota.billing.errors import Conflict, Forbidden, Unprocessable
from quota.billing.repo import AccountRow, AgentRow, Posting
from quota.billing.store import Tx
from quota.contract import wire
from quota.core.billing import (
    AgentRole,
    EntryKind,
    Plan,
    PlanKind,
    low_balance_due,
)
from quota.core.errors import InvalidValue
from quota.core.money import (
    format_coin,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Notice:
    account_id: str
    kind: str  # low_balance, account_frozen, account_unfrozen, deposit_review
    payload: dict[str, Any]


@dataclass(slots=True, kw_only=True)
class Op:
    """One operation's transaction, time, idempotency key and what it produced."""

    tx: Tx
    now: int
    key: str
    config: BillingConfig
    entries: list[wire.LedgerEntry] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    changes: dict[str, list[str]] = field(default_factory=dict)  # reason -> agent ids
    topups: list[wire.TopupNote] = field(default_factory=list)  # bought automatically
    # relay -> leases granted it here, pushed to that relay only with the change events
    relay_leases: dict[str, list[wire.Lease]] = field(default_factory=dict)
    numbered: bool = True  # False: entries are written in batches, their ids not read back

    async def post(
        self, account: AccountRow, posting: Posting, *, deferred: bool = False
    ) -> AccountRow:
        account, entry = await repo.post(
            self.tx,
            account,
            posting,
            key=self.key,
            at=self.now,
            numbered=self.numbered,
            deferred=deferred,
        )
        self.entries.append(entry)
        return account

    def changed(self, agent_ids: list[str], reason: str) -> None:
        """Announce to relays, after the commit, that these agents changed."""
        ids = self.changes.setdefault(reason, [])
        ids.extend(a for a in agent_ids if a not in ids)

    async def changed_account(self, account_id: str, reason: str) -> None:
        """Announce a change of every agent of an account (balance, freeze)."""
        self.changed(await repo.agent_ids_of(self.tx, account_id), reason)

    def events(self) -> list[wire.PushEvent]:
        return [
            wire.PushEvent(type="changed", agent_ids=ids, reason=reason)
            for reason, ids in self.changes.items()
            if ids
        ]

    def plan(self, name: str) -> Plan:
        try:
            return self.config.catalogue.plan(name)
        except InvalidValue as exc:
            raise Unprocessable(str(exc)) from None

    async def notice(self, account: AccountRow, kind: str, **payload: Any) -> None:
        """Keep a notice in the webhook outbox (pending when a webhook is configured)."""
        event_id = "evt_" + secrets.token_hex(12)
        body = {"id": event_id, "account_id": account.id, "kind": kind, "at": self.now, **payload}
        state = repo.webhooks.PENDING if self.config.webhook_url else repo.webhooks.NONE
        await repo.add_notice(
            self.tx,
            account.id,
            kind,
            json.dumps(body, sort_keys=True),
            self.now,
            event_id=event_id,
            state=state,
        )
        self.notices.append(Notice(account_id=account.id, kind=kind, payload=body))


def require_unfrozen(account: AccountRow) -> None:
    if account.frozen:
        raise Forbidden(
            f"account is frozen ({account.frozen_reason}); only reads and deposits are allowed"
            " until a deposit covers what is due"
        )


def require_paying(agent: AgentRow) -> None:
    if not AgentRole(agent.role).pays:
        raise Conflict(f"agent {agent.name!r} is a support agent: it needs no plan or traffic")


async def save_agent(op: Op, agent: AgentRow, **changes: Any) -> AgentRow:
    agent = dataclasses.replace(agent, **changes)
    await repo.save_agent(op.tx, agent)
    return agent


def _utc(ms: int) -> str:
    """Epoch ms as people read it in a ledger reason: "2026-12-02T09:48:07Z"."""
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def start_period(
    op: Op, account: AccountRow, agent: AgentRow, plan: Plan, kind: EntryKind, start: int
) -> tuple[AccountRow, AgentRow]:
    """Charge one period of `plan` and refill the bucket (prepaid plans), from `start`."""
    prepaid = plan.kind is PlanKind.PERIODIC
    account = await op.post(
        account,
        Posting(
            kind=kind,
            amount=-plan.price if prepaid else 0,
            agent_id=agent.id,
            traffic_bytes=(plan.traffic if prepaid else 0) - agent.bucket_bytes,
            reason=f"{kind.value} of {agent.name} to plan {plan.name}"
            + (f" ({format_coin(plan.price)})" if prepaid else " (pay-as-you-go)")
            + f", period from {_utc(start)}",
        ),
    )
    agent = await save_agent(
        op,
        agent,
        plan=plan.name,
        active=True,
        lapsed=False,
        topup_spent=0,
        topup_since=start,
        time_carry=0,
        bucket_bytes=plan.traffic if prepaid else 0,
        active_until=start + plan.period_ms if prepaid else None,
    )
    return account, agent


async def monthly_total(op: Op, account_id: str) -> int:
    """The monthly price of the plans of the account's active agents."""
    total = 0
    for agent in await repo.agents_of(op.tx, account_id):
        plan = op.config.catalogue.plans.get(agent.plan or "")
        if plan is not None and (agent.active or agent.lapsed):
            total += plan.monthly
    return total


async def check_low_balance(op: Op, account: AccountRow) -> AccountRow:
    """Send a low-balance notice when due (below twice the plans' monthly total)."""
    total = await monthly_total(op, account.id)
    if not low_balance_due(
        balance=account.balance,
        monthly_total=total,
        last_notice_at=account.low_notice_at,
        now=op.now,
        interval_ms=op.config.low_balance_interval_ms,
    ):
        return account
    await op.notice(account, "low_balance", balance=account.balance, threshold=2 * total)
    return await repo.save_account(
        op.tx, account, dataclasses.replace(account, low_notice_at=op.now)
    )
