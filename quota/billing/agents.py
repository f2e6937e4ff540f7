"""Agent operations: registration, keys, settings, plans, packages, usage, maintenance.

Invariants:
- A frozen account reads, deposits and reports usage; every other mutation on
  it is refused with 403 and the reason (key revocation excepted: revoking
  access is a safety measure, never blocked).
- A usage report is applied once per (relay_id, seq); a repeat is answered with
  the first answer marked `duplicate`.
- Maintenance processes each agent in its own transaction, so one agent's
  failure never undoes another's renewal; it is safe to run at any time and any
  number of times (a renewal moves `active_until` in the same transaction).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from typing import Any

from quota.billing import charging, lifecycle, repo
from quota.billing.errors import BadRequest, Conflict, NotFound
from quota.billing.op import Op, require_unfrozen
from quota.billing.repo import AgentRow
from quota.billing.service import Principal, Service
from quota.billing.sync import apply_sync, relay_agents
from quota.contract import wire
from quota.core.billing import AgentRole


class BillingService(Service):
    """The whole billing API as plain async methods (the HTTP app is a thin shell)."""

    async def register_agent(
        self, who: Principal, key: str, account_id: str, req: wire.RegisterAgentRequest
    ) -> Any:
        if not req.name.strip():
            raise BadRequest("name: must not be empty")
        for i, pub in enumerate(req.public_keys):
            if not pub.startswith(("ssh-", "ecdsa-", "sk-")) or len(pub.split()) < 2:
                raise BadRequest(f"public_keys[{i}]: not an OpenSSH public key line")

        async def run(op: Op) -> wire.Agent:
            account = await self.account(op, who, account_id)
            require_unfrozen(account)
            exists = await op.tx.one(
                "SELECT 1 FROM agents WHERE account_id = ? AND name = ?", (account_id, req.name)
            )
            if exists:
                raise Conflict(f"name: this account already has an agent {req.name!r}")
            agent = AgentRow(
                id="agt_" + secrets.token_hex(8),
                account_id=account_id,
                name=req.name,
                role=req.role,
                plan=None,
                active=not AgentRole(req.role).pays,
                lapsed=False,
                active_until=None,
                auto_renew=True,
                allow_metered=False,
                bucket_bytes=0,
                package_bytes=0,
                metered_carry=0,
                time_carry=0,
                topup_package=None,
                topup_limit=0,
                topup_spent=0,
                topup_below=0,
                topup_blocked=False,
                topup_since=op.now,
                created_at=op.now,
            )
            await repo.insert_agent(op.tx, agent)
            op.changed([agent.id], "register")
            for pub in req.public_keys:
                await op.tx.run(
                    "INSERT INTO agent_keys (id, agent_id, public_key) VALUES (?, ?, ?)",
                    ("key_" + secrets.token_hex(8), agent.id, pub),
                )
            return await repo.agent_wire(op.tx, agent)

        return await self.mutate(who, key, [account_id, wire.dump(req)], run)

    async def list_agents(self, who: Principal, account_id: str) -> Any:
        async def run(op: Op) -> wire.AgentList:
            await self.account(op, who, account_id)
            agents = await repo.agents_of(op.tx, account_id)
            return wire.AgentList(agents=[await repo.agent_wire(op.tx, a) for a in agents])

        return await self.read(run)

    async def get_agent(self, who: Principal, agent_id: str) -> Any:
        async def run(op: Op) -> wire.Agent:
            _, agent = await self.agent(op, who, agent_id)
            return await repo.agent_wire(op.tx, agent)

        return await self.read(run)

    async def revoke_key(self, who: Principal, key: str, agent_id: str, key_id: str) -> Any:
        async def run(op: Op) -> wire.Agent:
            _, agent = await self.agent(op, who, agent_id)
            changed = await op.tx.run(
                "UPDATE agent_keys SET revoked_at = COALESCE(revoked_at, ?)"
                " WHERE id = ? AND agent_id = ?",
                (op.now, key_id, agent_id),
            )
            if not changed:
                raise NotFound(f"no key {key_id!r} on agent {agent_id!r}")
            op.changed([agent_id], "revoke")
            return await repo.agent_wire(op.tx, agent)

        return await self.mutate(who, key, ["revoke", agent_id, key_id], run)

    async def update_settings(
        self, who: Principal, key: str, agent_id: str, req: wire.AgentSettingsRequest
    ) -> Any:
        changes = {name: getattr(req, name) for name in req.__struct_fields__}
        changes = {k: v for k, v in changes.items() if v is not None}
        if changes.get("topup_package") == "":
            changes["topup_package"] = None
        elif "topup_package" in changes and changes["topup_package"] not in (
            self.config.catalogue.packages
        ):
            raise BadRequest(f"topup_package: unknown package {changes['topup_package']!r}")

        async def run(op: Op) -> wire.Agent:
            account, agent = await self.agent(op, who, agent_id)
            require_unfrozen(account)
            agent = dataclasses.replace(agent, **changes)
            await repo.save_agent(op.tx, agent)
            op.changed([agent.id], "settings")
            return await repo.agent_wire(op.tx, agent)

        return await self.mutate(who, key, [agent_id, wire.dump(req)], run)

    async def _charge_result(self, op: Op, account: Any, agent: AgentRow) -> wire.ChargeResult:
        return wire.ChargeResult(
            agent=await repo.agent_wire(op.tx, agent),
            account=account.to_wire(),
            entries=list(op.entries),
        )

    async def subscribe(
        self, who: Principal, key: str, agent_id: str, req: wire.SubscribeRequest
    ) -> Any:
        async def run(op: Op) -> wire.ChargeResult:
            account, agent = await self.agent(op, who, agent_id)
            account, agent = await charging.subscribe(op, account, agent, req.plan, req.auto_renew)
            return await self._charge_result(op, account, agent)

        return await self.mutate(who, key, [agent_id, wire.dump(req)], run)

    async def change_plan(
        self, who: Principal, key: str, agent_id: str, req: wire.ChangePlanRequest
    ) -> Any:
        async def run(op: Op) -> wire.ChargeResult:
            account, agent = await self.agent(op, who, agent_id)
            account, agent = await charging.change_plan(op, account, agent, req.plan)
            return await self._charge_result(op, account, agent)

        return await self.mutate(who, key, ["plan", agent_id, wire.dump(req)], run)

    async def buy_package(
        self, who: Principal, key: str, agent_id: str, req: wire.BuyPackageRequest
    ) -> Any:
        async def run(op: Op) -> wire.ChargeResult:
            account, agent = await self.agent(op, who, agent_id)
            require_unfrozen(account)
            account, agent = await charging.buy_packages(
                op, account, agent, req.package, 1, "bought"
            )
            op.changed([agent.id], "package")
            return await self._charge_result(op, account, agent)

        return await self.mutate(who, key, [agent_id, wire.dump(req)], run)

    async def report_usage(self, who: Principal, req: wire.UsageReport) -> Any:
        """Apply one relay report once; answer each agent's grant and state."""
        merged: dict[str, list[int]] = {}
        for item in req.items:
            totals = merged.setdefault(item.agent_id, [0, 0])
            totals[0] += item.bytes
            totals[1] += item.tunnel_seconds

        async def run(op: Op) -> Any:
            row = await op.tx.one(
                "SELECT body, kind FROM usage_reports WHERE relay_id = ? AND seq = ?",
                (who.id, req.seq),
            )
            if row is not None:
                if row[1] != "usage":
                    raise Conflict(f"seq: {req.seq} of relay {who.id} was a /v1/sync report")
                return {**json.loads(row[0]), "duplicate": True}
            grants = []
            for agent_id, (nbytes, seconds) in merged.items():
                found = await repo.get_agent(op.tx, agent_id)
                if found is None:  # answered, not refused: one bad id must not stall a relay
                    grants.append(_unknown_agent(agent_id, nbytes))
                    continue
                account = await repo.get_account(op.tx, found.account_id)
                assert account is not None
                item = wire.UsageItem(agent_id=agent_id, bytes=nbytes, tunnel_seconds=seconds)
                account, _, grant = await charging.apply_usage(op, account, found, item)
                grants.append(grant)
            body = wire.dump(
                wire.UsageResult(relay_id=who.id, seq=req.seq, duplicate=False, agents=grants)
            )
            await op.tx.run(
                "INSERT INTO usage_reports (relay_id, seq, body, at) VALUES (?, ?, ?, ?)",
                (who.id, req.seq, json.dumps(body), op.now),
            )
            return body

        return await self._run(f"usage:{who.id}:{req.seq}", run)

    async def sync(self, who: Principal, req: wire.SyncRequest) -> Any:
        """Apply one relay sync once (usage, returns, lease requests); answer its leases."""
        return await self._run(f"sync:{who.id}:{req.seq}", lambda op: apply_sync(op, who.id, req))

    async def relay_agents(self) -> Any:
        """Every agent as relays need it: state and keys not revoked."""
        return await self.read(relay_agents)

    async def catalogue(self) -> Any:
        cat = self.config.catalogue
        return wire.dump(
            wire.Catalogue(
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
                metered_price_per_gb=self.config.metered_price_per_gb,
            )
        )

    async def run_maintenance(self) -> wire.MaintenanceResult:
        """Renew, expire or lapse every agent whose period ended; each in its own transaction."""
        now = self.clock.now_ms()
        async with self.store.reading() as tx:
            due = [a.id for a in await repo.due_agents(tx, now)]
        counts = {"renewed": 0, "expired": 0, "lapsed": 0}
        frozen: list[str] = []
        for agent_id in due:
            outcome, account_id = await self._run(f"renewal:{agent_id}", self._renew_one(agent_id))
            if outcome in counts:
                counts[outcome] += 1
            if outcome == "lapsed" and account_id not in frozen:
                frozen.append(account_id)
        return wire.MaintenanceResult(frozen_accounts=frozen, **counts)

    def _renew_one(self, agent_id: str) -> Any:
        async def run(op: Op) -> tuple[str, str]:
            agent = await repo.get_agent(op.tx, agent_id)
            if agent is None:
                return "none", ""
            account = await repo.get_account(op.tx, agent.account_id)
            assert account is not None
            op.key = f"renewal:{agent_id}:{agent.active_until}"
            _, outcome = await lifecycle.renew_due(op, account, agent)
            return outcome, account.id

        return run

    async def admin_maintenance(self, who: Principal, key: str) -> Any:
        """Run maintenance now (operators, tests); not idempotent by key: it is by nature."""
        return wire.dump(await self.run_maintenance())

    async def audit(self, account_id: str) -> tuple[int, int, dict[str, int], dict[str, int]]:
        """Balance, ledger sum, each agent's traffic and its ledger sum (for invariant checks)."""
        async with self.store.reading() as tx:
            account = await repo.get_account(tx, account_id)
            if account is None:
                raise NotFound(f"no account {account_id!r}")
            total, traffic = await repo.sums(tx, account_id)
            agents = {a.id: a.traffic for a in await repo.agents_of(tx, account_id)}
        return account.balance, total, agents, traffic


def _unknown_agent(agent_id: str, nbytes: int) -> wire.AgentGrant:
    return wire.AgentGrant(
        agent_id=agent_id,
        status="unknown",
        traffic_remaining=0,
        metered=False,
        unbilled_bytes=nbytes,
    )
