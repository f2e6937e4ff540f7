"""Charges inside one transaction: subscriptions, plan changes, packages, usage.

Invariants (each function runs inside the caller's transaction, so all or nothing):
- Every change of a balance or of an agent's bucket/package bytes is posted as
  exactly one ledger entry carrying that change (`Op.post`), so the balance is
  the sum of its entries and an agent's remaining traffic the sum of its
  entries' `traffic_bytes`.
- The decisions come from `quota.core.billing`; this module only carries them
  out, with no `await` other than the store's between a decision and its effect.
- A frozen account draws no metered traffic and buys no auto top-up: its agents
  relay only within the traffic they hold.
- A plan change credits the unused time of the old period minus the included
  traffic already used beyond the elapsed share, valued at the catalogue's
  lowest price per byte (`plan_change_credit`): no sequence of plan changes
  buys traffic below the catalogue's prices.
"""

from __future__ import annotations

from dataclasses import dataclass

from quota.billing.errors import Conflict, PaymentRequired, Unprocessable
from quota.billing.op import (
    Op,
    check_low_balance,
    require_paying,
    require_unfrozen,
    save_agent,
    start_period,
)
from quota.billing.repo import AccountRow, AgentRow, Posting
from quota.contract import wire
from quota.core.billing import (
    AgentRole,
    EntryKind,
    Plan,
    PlanKind,
    TopupOutcome,
    decide_topup,
    draw_traffic,
    roll_up,
)
from quota.core.errors import InvalidValue
from quota.core.money import (
    MS_PER_MONTH,
    charge_with_carry,
    format_coin,
    metered_rate,
    plan_change_credit,
    tunnel_time_rate,
)


async def subscribe(
    op: Op, account: AccountRow, agent: AgentRow, plan_name: str, auto_renew: bool
) -> tuple[AccountRow, AgentRow]:
    require_unfrozen(account)
    require_paying(agent)
    plan = op.plan(plan_name)
    if agent.active:
        raise Conflict(f"agent {agent.name!r} already has plan {agent.plan!r}; change the plan")
    if plan.kind is PlanKind.TUNNEL_TIME and account.balance <= 0:
        raise PaymentRequired("a pay-as-you-go plan needs a balance above zero")
    agent = await save_agent(op, agent, auto_renew=auto_renew)
    op.changed([agent.id], "subscription")
    # A purchase the holder makes is not a drain: low balance is checked on charges.
    return await start_period(op, account, agent, plan, EntryKind.SUBSCRIPTION, op.now)


async def change_plan(
    op: Op, account: AccountRow, agent: AgentRow, plan_name: str
) -> tuple[AccountRow, AgentRow]:
    """Credit the unused part of the old period, then charge the new plan: all or nothing."""
    require_unfrozen(account)
    require_paying(agent)
    new = op.plan(plan_name)
    if not agent.active or agent.plan is None:
        raise Conflict(f"agent {agent.name!r} has no active plan; subscribe instead")
    if agent.plan == new.name:
        raise Conflict(f"agent {agent.name!r} is already on plan {new.name!r}")
    old = op.plan(agent.plan)
    credit = 0
    if old.kind is PlanKind.PERIODIC and agent.active_until is not None:
        credit = _change_credit(op, old, agent)
    account = await op.post(
        account,
        Posting(
            kind=EntryKind.PRORATION_CREDIT,
            amount=credit,
            agent_id=agent.id,
            traffic_bytes=-agent.bucket_bytes,
            reason=f"unused part of plan {old.name} for {agent.name}",
        ),
    )
    agent = await save_agent(op, agent, bucket_bytes=0)
    op.changed([agent.id], "plan")
    return await start_period(op, account, agent, new, EntryKind.SUBSCRIPTION, op.now)


def _change_credit(op: Op, old: Plan, agent: AgentRow) -> int:
    """The unused part of `old`, less the included bytes used beyond the elapsed time's share."""
    assert agent.active_until is not None
    metered = metered_rate(op.config.metered_price_per_gb)
    return plan_change_credit(
        price=old.price,
        period_ms=old.period_ms,
        remaining_ms=agent.active_until - op.now,
        included=old.traffic,
        # a catalogue edited since the subscription may have shrunk the plan's traffic
        included_left=min(agent.bucket_bytes, old.traffic),
        byte_price=op.config.catalogue.lowest_byte_price(metered),
    )


async def buy_packages(
    op: Op, account: AccountRow, agent: AgentRow, name: str, count: int, reason: str
) -> tuple[AccountRow, AgentRow]:
    require_paying(agent)
    try:
        package = op.config.catalogue.package(name)
    except InvalidValue as exc:
        raise Unprocessable(str(exc)) from None
    account = await op.post(
        account,
        Posting(
            kind=EntryKind.PACKAGE,
            amount=-package.price * count,
            agent_id=agent.id,
            traffic_bytes=package.traffic * count,
            reason=f"{reason}: {count} x {package.name}",
        ),
    )
    agent = await save_agent(op, agent, package_bytes=agent.package_bytes + package.traffic * count)
    return account, agent


async def auto_topup(
    op: Op, account: AccountRow, agent: AgentRow, need: int, low_water: int | None = None
) -> tuple[AccountRow, AgentRow]:
    """Buy the fewest packages so `need` bytes leave `low_water` (default: the agent's)."""
    if account.frozen or not agent.active or not agent.topup_package:
        return account, agent
    try:
        package = op.config.catalogue.package(agent.topup_package)
    except InvalidValue:
        return account, agent  # the package left the catalogue: auto top-up is off
    if agent.active_until is None and op.now - agent.topup_since >= MS_PER_MONTH:
        # pay-as-you-go has no period: the limit counts per 30 days
        agent = await save_agent(op, agent, topup_spent=0, topup_since=op.now)
    decision = decide_topup(
        remaining=agent.traffic,
        need=need,
        low_water=agent.topup_below if low_water is None else low_water,
        package=package,
        limit=agent.topup_limit,
        spent=agent.topup_spent,
        balance=account.balance,
        blocked=agent.topup_blocked,
    )
    if decision.outcome is TopupOutcome.BALANCE_SHORT:
        return account, await save_agent(op, agent, topup_blocked=True)
    if decision.outcome is not TopupOutcome.BUY:
        return account, agent
    account, agent = await buy_packages(
        op, account, agent, package.name, decision.count, "auto top-up"
    )
    spent = agent.topup_spent + package.price * decision.count
    op.topups.append(
        wire.TopupNote(
            agent_id=agent.id,
            package=package.name,
            count=decision.count,
            amount=package.price * decision.count,
        )
    )
    op.changed([agent.id], "topup")
    return account, await save_agent(op, agent, topup_spent=spent)


async def post_traffic(op: Op, account: AccountRow, agent: AgentRow, held: int) -> AccountRow:
    """The ledger entry of `held` bytes drawn from bucket and packages (no roll-up)."""
    return await op.post(
        account,
        Posting(
            kind=EntryKind.TRAFFIC,
            agent_id=agent.id,
            traffic_bytes=-held,
            used_bytes=held,
            reason=f"{held} bytes relayed from bucket and packages",
        ),
    )


async def post_metered(
    op: Op, account: AccountRow, agent: AgentRow, nbytes: int, cost: int, *, deferred: bool = False
) -> AccountRow:
    """The ledger entry of `nbytes` metered traffic drawn from the balance for `cost`."""
    return await op.post(
        account,
        Posting(
            kind=EntryKind.METERED_TRAFFIC,
            amount=-cost,
            agent_id=agent.id,
            used_bytes=nbytes,
            reason=f"{nbytes} bytes metered at {format_coin(op.config.metered_price_per_gb)}/GB",
        ),
        deferred=deferred,
    )


async def _charge_traffic(
    op: Op, account: AccountRow, agent: AgentRow, need: int
) -> tuple[AccountRow, AgentRow, int]:
    account, agent = await auto_topup(op, account, agent, need)
    draw = draw_traffic(
        need=need,
        bucket=agent.bucket_bytes,
        packages=agent.package_bytes,
        metered=agent.allow_metered and not account.frozen,
        balance=account.balance,
        rate=metered_rate(op.config.metered_price_per_gb),
        carry=agent.metered_carry,
    )
    held = draw.from_bucket + draw.from_packages
    window = (agent.open_used, agent.open_from, agent.open_until)
    if held and op.config.traffic_rollup_ms:  # one entry per window (`repo.rollup`)
        window = roll_up(window, held, now=op.now, length=op.config.traffic_rollup_ms)
    elif held:
        account = await post_traffic(op, account, agent, held)
    if draw.metered_bytes:
        account = await post_metered(op, account, agent, draw.metered_bytes, draw.cost)
    agent = await save_agent(
        op,
        agent,
        bucket_bytes=agent.bucket_bytes - draw.from_bucket,
        package_bytes=agent.package_bytes - draw.from_packages,
        metered_carry=draw.carry,
        open_used=window[0],
        open_from=window[1],
        open_until=window[2],
    )
    return account, agent, draw.unbilled


async def _charge_time(
    op: Op, account: AccountRow, agent: AgentRow, seconds: int
) -> tuple[AccountRow, AgentRow]:
    plan = op.config.catalogue.plans.get(agent.plan or "")
    if plan is None or plan.kind is not PlanKind.TUNNEL_TIME or not agent.active:
        return account, agent  # only active pay-as-you-go agents pay for time
    charge = charge_with_carry(seconds, tunnel_time_rate(plan.price), agent.time_carry)
    paid = min(charge.amount, account.balance)
    short = charge.amount - paid
    if paid:
        account = await op.post(
            account,
            Posting(
                kind=EntryKind.TUNNEL_TIME,
                amount=-paid,
                agent_id=agent.id,
                reason=f"{seconds} s of tunnel time on plan {plan.name}"
                + (f" ({format_coin(short)} unpaid)" if short else ""),
            ),
        )
    if short:
        op.changed([agent.id], "lapse")
        return account, await save_agent(op, agent, active=False, lapsed=True, time_carry=0)
    return account, await save_agent(op, agent, time_carry=charge.carry)


@dataclass(frozen=True, slots=True, kw_only=True)
class Charged:
    """One agent's usage billed: its rows after the charge, and the bytes nobody paid for."""

    account: AccountRow
    agent: AgentRow
    unbilled: int


async def apply_usage(
    op: Op, account: AccountRow, agent: AgentRow, *, nbytes: int, seconds: int
) -> Charged:
    """Bill one agent's reported bytes and tunnel seconds."""
    unbilled, before = 0, account.balance
    if AgentRole(agent.role).pays:
        account, agent = await _charge_time(op, account, agent, seconds)
        if nbytes:
            account, agent, unbilled = await _charge_traffic(op, account, agent, nbytes)
    if account.balance < before:  # only an automatic charge can make a notice due
        account = await check_low_balance(op, account)
    return Charged(account=account, agent=agent, unbilled=unbilled)
