"""Subscriptions, plan changes and traffic packages an account holder buys; the catalogue.

Invariants:
- Each purchase is all or nothing in one transaction (the charge rules are in
  `charging`), applied once per (principal, idempotency key), and answers the
  agent, the account and exactly the ledger entries it posted.
- A frozen account buys nothing (403); a support agent needs no plan (400).
- The catalogue is the configured one; it is read, never stored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from quota.billing import charging, repo
from quota.billing.auth import Principal, owned_agent
from quota.billing.config import BillingConfig
from quota.billing.op import Op, require_unfrozen
from quota.billing.repo import AccountRow, AgentRow
from quota.billing.runner import Runner
from quota.billing.sync import grant_waiting
from quota.billing.waiting import Waiting
from quota.contract import wire

_Purchase = Callable[[Op, AccountRow, AgentRow], Awaitable[tuple[AccountRow, AgentRow]]]


class Plans:
    """What an account holder buys for an agent, and what there is to buy."""

    def __init__(
        self, runner: Runner, config: BillingConfig, waiting: Waiting | None = None
    ) -> None:
        self._runner = runner
        self._config = config
        self._waiting = waiting if waiting is not None else Waiting()

    async def _buy(
        self, who: Principal, key: str, agent_id: str, request: tuple[str, object], buy: _Purchase
    ) -> wire.ChargeResult:
        async def run(op: Op) -> wire.ChargeResult:
            account, agent = await owned_agent(op, who, agent_id)
            account, agent = await buy(op, account, agent)
            return wire.ChargeResult(
                agent=await repo.agent_wire(op.tx, agent),
                account=account.to_wire(),
                entries=list(op.entries),
            )

        return await self._runner.once(who, key, request, wire.ChargeResult, run)

    async def subscribe(
        self, who: Principal, key: str, agent_id: str, req: wire.SubscribeRequest
    ) -> wire.ChargeResult:
        async def buy(op: Op, account: AccountRow, agent: AgentRow) -> tuple[AccountRow, AgentRow]:
            return await charging.subscribe(op, account, agent, req.plan, req.auto_renew)

        return await self._buy(who, key, agent_id, ("subscribe", [agent_id, wire.dump(req)]), buy)

    async def change_plan(
        self, who: Principal, key: str, agent_id: str, req: wire.ChangePlanRequest
    ) -> wire.ChargeResult:
        async def buy(op: Op, account: AccountRow, agent: AgentRow) -> tuple[AccountRow, AgentRow]:
            return await charging.change_plan(op, account, agent, req.plan)

        request = ("change_plan", [agent_id, wire.dump(req)])
        return await self._buy(who, key, agent_id, request, buy)

    async def buy_package(
        self, who: Principal, key: str, agent_id: str, req: wire.BuyPackageRequest
    ) -> wire.ChargeResult:
        async def buy(op: Op, account: AccountRow, agent: AgentRow) -> tuple[AccountRow, AgentRow]:
            require_unfrozen(account)
            account, agent = await charging.buy_packages(
                op, account, agent, req.package, 1, "bought"
            )
            op.changed([agent.id], "package")
            await self._grant_waiting(op, agent.id)
            return account, agent

        request = ("buy_package", [agent_id, wire.dump(req)])
        return await self._buy(who, key, agent_id, request, buy)

    async def _grant_waiting(self, op: Op, agent_id: str) -> None:
        """Relays whose streams wait for this agent's bytes get them now, pushed with the event."""
        for relay_id, want in self._waiting.of(agent_id).items():
            lease = await grant_waiting(op, relay_id, agent_id, want)
            if lease is not None:
                op.relay_leases.setdefault(relay_id, []).append(lease)

    def catalogue(self) -> wire.Catalogue:
        cat = self._config.catalogue
        return wire.Catalogue(
            plans=[
                wire.PlanInfo(
                    name=p.name,
                    kind=p.kind,
                    price=p.price,
                    period_ms=p.period_ms,
                    traffic=p.traffic,
                )
                for p in cat.plans.values()
            ],
            packages=[
                wire.PackageInfo(name=p.name, price=p.price, traffic=p.traffic)
                for p in cat.packages.values()
            ],
            metered_price_per_gb=self._config.metered_price_per_gb,
        )
