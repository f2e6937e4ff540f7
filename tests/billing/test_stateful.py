"""A seeded simulation: random billing operations, with the ledger invariants after each step.

Besides the ledger adding up, every account has paid for the traffic it relayed
at least the catalogue's lowest price per byte: no sequence of subscribes, plan
changes, packages, top-ups, usage and time buys traffic cheaper (issue 9's plan
flipping did, through a refund that ignored the included traffic already used).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from quota.billing.auth import Principal
from quota.billing.clock import ManualClock
from quota.billing.errors import ClientError
from quota.billing.service import BillingService
from quota.billing.store import open_store
from quota.contract import wire
from quota.core.money import charge_with_carry, metered_rate
from tests.billing.api import DAY, make_config
from tests.rigs.postgres import BACKENDS, TestDatabase

ADMIN = Principal(kind="admin")
RELAY = Principal(kind="relay", id="relay-1")
PLANS = st.sampled_from(["pro", "basic", "payg"])
PACKAGES = st.sampled_from(["1G", "10G"])


def _sqlite_file(folder: Path) -> str:
    return str(folder / "b.sqlite3")


class BillingMachine(RuleBasedStateMachine):
    """Random deposits, plans, usage, packages, top-ups and time jumps keep the ledger exact."""

    new_database: Callable[[Path], str] = staticmethod(_sqlite_file)  # one per example

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="billing-sm-"))
        self.runner = asyncio.Runner()
        self.clock = ManualClock()
        self.store = open_store(self.new_database(self.dir))
        self.call(self.store.__aenter__())
        self.svc = BillingService(self.store, make_config(self.dir), self.clock)
        self.keys = 0
        self.seq = 0
        self.payments: dict[str, tuple[str, int]] = {}
        self.accounts: list[str] = []
        self.agents: list[tuple[str, str]] = []  # (account id, agent id)
        for name in ("a", "b"):
            created = self.call(self.svc.accounts.create(ADMIN, self.key(), _req("name", name)))
            acc = created.account.id
            self.accounts.append(acc)
            for role in ("client", "dual"):
                req = wire.RegisterAgentRequest(name=role, role=role, public_keys=[])
                agent = self.call(self.svc.agents.register(ADMIN, self.key(), acc, req))
                self.agents.append((acc, agent.id))

    def call(self, coro: Any) -> Any:
        return self.runner.run(coro)

    def attempt(self, coro: Any) -> Any:
        try:
            return self.call(coro)
        except ClientError:
            return None

    def key(self) -> str:
        self.keys += 1
        return f"k{self.keys}"

    def teardown(self) -> None:
        self.call(self.store.__aexit__(None, None, None))
        self.runner.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @initialize(plans=st.lists(PLANS, min_size=4, max_size=4), funds=st.integers(0, 100_000))
    def start(self, plans: list[str], funds: int) -> None:
        for i, _acc in enumerate(self.accounts):
            if funds:
                self.deposit(i, funds, 100 + i)
        for (_, agent_id), plan in zip(self.agents, plans, strict=True):
            self.subscribe(self.agents.index((_, agent_id)), plan, True)
            req = wire.AgentSettingsRequest(
                topup_package="1G", topup_limit=3_000, topup_below=10**8, allow_metered=True
            )
            self.attempt(self.svc.agents.update_settings(ADMIN, self.key(), agent_id, req))

    @rule(account=st.integers(0, 1), amount=st.integers(1, 60_000), pid=st.integers(0, 20))
    def deposit(self, account: int, amount: int, pid: int) -> None:
        payment_id = f"pay-{pid}"
        req = wire.DepositRequest(
            account_id=self.accounts[account], payment_id=payment_id, amount=amount
        )
        first = self.payments.get(payment_id)
        result = self.attempt(self.svc.accounts.deposit(ADMIN, req))
        if first is None:
            assert result is not None and result.status == "credited"
            self.payments[payment_id] = (req.account_id, amount)
        elif first == (req.account_id, amount):
            assert result is not None and result.amount == amount
        else:
            assert result is None  # refused: 409

    @rule(agent=st.integers(0, 3), plan=PLANS, auto_renew=st.booleans())
    def subscribe(self, agent: int, plan: str, auto_renew: bool) -> None:
        req = wire.SubscribeRequest(plan=plan, auto_renew=auto_renew)
        self.attempt(self.svc.plans.subscribe(ADMIN, self.key(), self.agents[agent][1], req))

    @rule(agent=st.integers(0, 3), plan=PLANS)
    def change_plan(self, agent: int, plan: str) -> None:
        req = wire.ChangePlanRequest(plan=plan)
        self.attempt(self.svc.plans.change_plan(ADMIN, self.key(), self.agents[agent][1], req))

    @rule(agent=st.integers(0, 3), package=PACKAGES)
    def buy(self, agent: int, package: str) -> None:
        req = wire.BuyPackageRequest(package=package)
        self.attempt(self.svc.plans.buy_package(ADMIN, self.key(), self.agents[agent][1], req))

    @rule(
        agent=st.integers(0, 3),
        package=PACKAGES | st.just(""),
        limit=st.integers(0, 20_000),
        below=st.integers(0, 2 * 10**9),
        metered=st.booleans(),
    )
    def settings(self, agent: int, package: str, limit: int, below: int, metered: bool) -> None:
        req = wire.AgentSettingsRequest(
            topup_package=package, topup_limit=limit, topup_below=below, allow_metered=metered
        )
        self.attempt(self.svc.agents.update_settings(ADMIN, self.key(), self.agents[agent][1], req))

    @rule(
        agent=st.integers(0, 3),
        nbytes=st.integers(0, 4 * 10**9),
        seconds=st.integers(0, 5 * 86_400),
        repeat=st.booleans(),
    )
    def usage(self, agent: int, nbytes: int, seconds: int, repeat: bool) -> None:
        self.seq += 1
        item = wire.SyncItem(agent_id=self.agents[agent][1], bytes=nbytes, tunnel_seconds=seconds)
        report = wire.SyncRequest(seq=self.seq, items=[item])
        first = wire.dump(self.call(self.svc.relays.sync(RELAY, report)))
        if repeat:
            again = wire.dump(self.call(self.svc.relays.sync(RELAY, report)))
            assert again == {**first, "duplicate": True}

    @rule(days=st.integers(1, 40))
    def time_passes(self, days: int) -> None:
        self.clock.advance(days * DAY)
        self.call(self.svc.maintenance.run())
        assert self.call(self.svc.maintenance.run()).renewed == 0  # nothing twice

    @invariant()
    def ledger_reconciles(self) -> None:
        for acc in self.accounts:
            audit = self.call(self.svc.accounts.audit(acc))
            balance, total = audit.balance, audit.ledger_total
            agents, traffic = audit.traffic, audit.ledger_traffic
            assert balance >= 0
            assert balance == total
            for agent_id, remaining in agents.items():
                assert remaining >= 0
                assert remaining == traffic.get(agent_id, 0)
        credited = self.call(self._deposits())
        assert credited == sum(amount for _, amount in self.payments.values())

    @invariant()
    def no_byte_below_the_lowest_price(self) -> None:
        config = self.svc.config
        lowest = config.catalogue.lowest_byte_price(metered_rate(config.metered_price_per_gb))
        for acc in self.accounts:
            deposited, used = self.call(self._paid_and_used(acc))
            spent = deposited - self.call(self.svc.accounts.audit(acc)).balance
            # each of the account's 2 agents carries below a millicoin of metered charge
            assert spent >= charge_with_carry(used, lowest, 0).amount - 2, (spent, used)

    async def _deposits(self) -> int:
        async with self.store.reading() as tx:
            row = await tx.one("SELECT COALESCE(SUM(amount), 0) FROM ledger WHERE kind='deposit'")
        return int(row[0]) if row else 0

    async def _paid_and_used(self, account_id: str) -> tuple[int, int]:
        """Coin deposited into the account and bytes relayed by its agents."""
        async with self.store.reading() as tx:
            row = await tx.one(
                "SELECT COALESCE(SUM(CASE WHEN kind='deposit' THEN amount ELSE 0 END), 0),"
                " COALESCE(SUM(used_bytes), 0) FROM ledger WHERE account_id = ?",
                (account_id,),
            )
        assert row is not None
        return int(row[0]), int(row[1])


def _req(field: str, value: str) -> wire.CreateAccountRequest:
    return wire.CreateAccountRequest(**{field: value})


SETTINGS = settings(
    max_examples=30,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_billing_state_machine(backend: str, request: pytest.FixtureRequest) -> None:
    """The ledger stays exact under random operations, on SQLite and on PostgreSQL alike."""
    machine: type[BillingMachine] = BillingMachine
    if backend == "postgresql":
        db: TestDatabase = request.getfixturevalue("postgresql_db")

        class OnPostgresql(BillingMachine):
            new_database = staticmethod(lambda _folder: db.fresh_url())

        machine = OnPostgresql
    run_state_machine_as_test(machine, settings=SETTINGS)
