"""Period ends, freezes and unfreezes, inside one transaction.

Invariants:
- `renew_due` charges each ended period of one agent once, oldest first,
  moving `active_until` in the same transaction, so a repeated or late
  maintenance pass never charges a period twice.
- A renewal the balance cannot pay lapses the agent (inactive) and freezes the
  account; a deposit that covers every lapsed auto-renew agent's price
  unfreezes it and renews those agents at once. Every renewal, by maintenance
  or by a deposit, is followed by the low-balance check.
"""

from __future__ import annotations

import dataclasses

from quota.billing import repo
from quota.billing.op import Op, check_low_balance, save_agent, start_period
from quota.billing.repo import AccountRow, AgentRow, Posting
from quota.core.billing import (
    EntryKind,
    Plan,
    RenewalAction,
    decide_renewal,
)
from quota.core.money import (
    format_coin,
)


async def renew_due(op: Op, account: AccountRow, agent: AgentRow) -> tuple[AccountRow, str]:
    """Renew, expire or lapse one agent's ended periods, each missed period once, in order."""
    outcome = "none"
    while agent.active and agent.active_until is not None and agent.active_until <= op.now:
        plan = op.config.catalogue.plans.get(agent.plan or "")
        action = (
            RenewalAction.EXPIRE  # the plan left the catalogue: nothing to renew into
            if plan is None
            else decide_renewal(
                active_until=agent.active_until,
                now=op.now,
                auto_renew=agent.auto_renew,
                balance=account.balance,
                price=plan.price,
            )
        )
        if action is RenewalAction.RENEW and plan is not None:
            account, agent = await start_period(
                op, account, agent, plan, EntryKind.RENEWAL, agent.active_until
            )
            account = await check_low_balance(op, account)
            op.changed([agent.id], "renewal")
            outcome = "renewed"
            continue
        account = await op.post(
            account,
            Posting(
                kind=EntryKind.EXPIRY,
                agent_id=agent.id,
                traffic_bytes=-agent.bucket_bytes,
                reason=f"period of plan {agent.plan} for {agent.name} ended"
                + (": renewal could not be paid" if action is RenewalAction.LAPSE else ""),
            ),
        )
        lapsed = action is RenewalAction.LAPSE
        agent = await save_agent(op, agent, active=False, lapsed=lapsed, bucket_bytes=0)
        op.changed([agent.id], "lapse" if lapsed else "expiry")
        if lapsed:
            account = await freeze(op, account, agent, plan)
        outcome = "lapsed" if lapsed else "expired"
    return account, outcome


async def freeze(op: Op, account: AccountRow, agent: AgentRow, plan: Plan | None) -> AccountRow:
    price = format_coin(plan.price if plan else 0)
    reason = f"renewal of agent {agent.name} ({price}) could not be paid"
    if not account.frozen:
        account = await repo.save_account(
            op.tx, account, dataclasses.replace(account, frozen=True, frozen_reason=reason)
        )
        await op.notice(account, "account_frozen", reason=reason, balance=account.balance)
        await op.changed_account(account.id, "freeze")
    return account


def _revivable(op: Op, agent: AgentRow) -> bool:
    """A lapsed agent a deposit brings back: auto-renew on, or pay-as-you-go."""
    plan = op.config.catalogue.plans.get(agent.plan or "")
    return agent.lapsed and plan is not None and (agent.auto_renew or not plan.prepaid)


async def after_deposit(op: Op, account: AccountRow) -> tuple[AccountRow, list[str]]:
    """Unfreeze and renew lapsed agents once the balance covers every renewal due."""
    agents = await repo.agents_of(op.tx, account.id)
    for agent in agents:
        if agent.topup_blocked:  # a deposit is what a blocked auto top-up waits for
            await save_agent(op, agent, topup_blocked=False)
    lapsed = [a for a in agents if _revivable(op, a)]
    due = sum(op.plan(a.plan or "").price for a in lapsed if op.plan(a.plan or "").prepaid)
    if account.balance < due:
        return account, []
    if account.frozen:
        account = await repo.save_account(
            op.tx, account, dataclasses.replace(account, frozen=False, frozen_reason=None)
        )
        await op.notice(account, "account_unfrozen", balance=account.balance)
        await op.changed_account(account.id, "unfreeze")
    renewed = []
    for agent in lapsed:
        fresh = dataclasses.replace(agent, topup_blocked=False)
        plan = op.plan(agent.plan or "")
        account, _ = await start_period(op, account, fresh, plan, EntryKind.RENEWAL, op.now)
        renewed.append(agent.id)
        op.changed([agent.id], "renewal")
    if renewed:  # the renewals are automatic charges: they may leave the balance low
        account = await check_low_balance(op, account)
    return account, renewed
