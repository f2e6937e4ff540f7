"""Agents: registration, SSH keys and settings.

Invariants:
- A frozen account reads, deposits and reports usage; registering an agent or
  changing its settings is refused with 403 and the reason. Revoking a key is
  never blocked: revoking access is a safety measure.
- An agent's name is unique within its account (409); a support agent is
  active from the start, a paying one only once subscribed.
- Every mutation is applied once per (principal, idempotency key) and
  announced to relays after its commit.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

from quota.billing import repo
from quota.billing.auth import Principal, owned_account, owned_agent
from quota.billing.config import BillingConfig
from quota.billing.errors import Conflict, NotFound, Unprocessable
from quota.billing.op import Op, require_unfrozen
from quota.billing.repo import AgentRow
from quota.billing.runner import Runner
from quota.contract import wire
from quota.core.billing import AgentRole


def _check_registration(req: wire.RegisterAgentRequest) -> None:
    if not req.name.strip():
        raise Unprocessable("name: must not be empty or blank")
    for i, pub in enumerate(req.public_keys):
        if not pub.startswith(("ssh-", "ecdsa-", "sk-")) or len(pub.split()) < 2:
            raise Unprocessable(f"public_keys[{i}]: not an OpenSSH public key line")


def _new_agent(account_id: str, req: wire.RegisterAgentRequest, now: int) -> AgentRow:
    return AgentRow(
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
        topup_since=now,
        created_at=now,
    )


class Agents:
    """Agents of accounts, their keys and their settings."""

    def __init__(self, runner: Runner, config: BillingConfig) -> None:
        self._runner = runner
        self._config = config

    async def register(
        self, who: Principal, key: str, account_id: str, req: wire.RegisterAgentRequest
    ) -> wire.Agent:
        _check_registration(req)

        async def run(op: Op) -> wire.Agent:
            account = await owned_account(op, who, account_id)
            require_unfrozen(account)
            if await repo.agent_name_taken(op.tx, account_id, req.name):
                raise Conflict(f"name: this account already has an agent {req.name!r}")
            agent = _new_agent(account_id, req, op.now)
            await repo.insert_agent(op.tx, agent)
            op.changed([agent.id], "register")
            for pub in req.public_keys:
                await repo.add_key(op.tx, "key_" + secrets.token_hex(8), agent.id, pub)
            return await repo.agent_wire(op.tx, agent)

        request = ("register_agent", [account_id, wire.dump(req)])
        return await self._runner.once(who, key, request, wire.Agent, run)

    async def of_account(self, who: Principal, account_id: str) -> wire.AgentList:
        async def run(op: Op) -> wire.AgentList:
            await owned_account(op, who, account_id)
            agents = await repo.agents_of(op.tx, account_id)
            return wire.AgentList(agents=[await repo.agent_wire(op.tx, a) for a in agents])

        return await self._runner.read(run)

    async def get(self, who: Principal, agent_id: str) -> wire.Agent:
        async def run(op: Op) -> wire.Agent:
            _, agent = await owned_agent(op, who, agent_id)
            return await repo.agent_wire(op.tx, agent)

        return await self._runner.read(run)

    async def revoke_key(self, who: Principal, key: str, agent_id: str, key_id: str) -> wire.Agent:
        async def run(op: Op) -> wire.Agent:
            _, agent = await owned_agent(op, who, agent_id)
            if not await repo.revoke_key(op.tx, agent_id, key_id, op.now):
                raise NotFound(f"no key {key_id!r} on agent {agent_id!r}")
            op.changed([agent_id], "revoke")
            return await repo.agent_wire(op.tx, agent)

        request = ("revoke_key", [agent_id, key_id])
        return await self._runner.once(who, key, request, wire.Agent, run)

    async def update_settings(
        self, who: Principal, key: str, agent_id: str, req: wire.AgentSettingsRequest
    ) -> wire.Agent:
        changes = self._settings(req)

        async def run(op: Op) -> wire.Agent:
            account, agent = await owned_agent(op, who, agent_id)
            require_unfrozen(account)
            agent = dataclasses.replace(agent, **changes)
            await repo.save_agent(op.tx, agent)
            op.changed([agent.id], "settings")
            return await repo.agent_wire(op.tx, agent)

        request = ("update_settings", [agent_id, wire.dump(req)])
        return await self._runner.once(who, key, request, wire.Agent, run)

    def _settings(self, req: wire.AgentSettingsRequest) -> dict[str, Any]:
        """The agent fields a settings request changes (the fields it sets)."""
        changes = {k: v for k, v in wire.dump(req).items() if v is not None}
        if changes.get("topup_package") == "":
            changes["topup_package"] = None
        elif "topup_package" in changes and changes["topup_package"] not in (
            self._config.catalogue.packages
        ):
            raise Unprocessable(f"topup_package: unknown package {changes['topup_package']!r}")
        return changes
