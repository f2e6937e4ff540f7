"""Who is calling, and what they may reach.

Invariants:
- A token is the admin's, a configured relay's, or an account's (found by its
  hash, never stored in clear); tokens are compared in constant time.
- An account token is looked up on the store's read-only connection (`peek`),
  never in a write transaction: a flood of unknown tokens does not queue
  behind, or hold up, the writers.
- An account token only ever reaches its own account and its agents: any other
  id is answered 404, exactly like an id that does not exist.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from quota.billing import repo
from quota.billing.config import BillingConfig
from quota.billing.errors import NotFound
from quota.billing.op import Op
from quota.billing.repo import AccountRow, AgentRow
from quota.billing.store import Store


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    kind: str  # admin, account, relay
    id: str = ""

    def scope(self) -> str:
        return f"{self.kind}:{self.id}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    """Turns a bearer token into the principal it stands for."""

    def __init__(self, store: Store, config: BillingConfig) -> None:
        self._store = store
        self._config = config

    async def principal_for(self, token: str) -> Principal | None:
        return self.configured(token) or await self.account(token)

    def configured(self, token: str) -> Principal | None:
        """The admin or relay whose configured token this is (no database read)."""
        given = token.encode()
        if secrets.compare_digest(given, self._config.admin_token.encode()):
            return Principal(kind="admin")
        for relay in self._config.relays:
            if secrets.compare_digest(given, relay.token.encode()):
                return Principal(kind="relay", id=relay.id)
        return None

    async def account(self, token: str) -> Principal | None:
        """The account whose token this is, read without a write transaction."""
        async with self._store.peek() as tx:
            account_id = await repo.account_id_by_token(tx, token_hash(token))
        return Principal(kind="account", id=account_id) if account_id else None


async def owned_account(op: Op, who: Principal, account_id: str) -> AccountRow:
    """The account, if `who` may reach it."""
    account = await repo.get_account(op.tx, account_id)
    if account is None or (who.kind == "account" and who.id != account_id):
        raise NotFound(f"no account {account_id!r}")
    return account


async def owned_agent(op: Op, who: Principal, agent_id: str) -> tuple[AccountRow, AgentRow]:
    """The agent and its account, if `who` may reach them."""
    agent = await repo.get_agent(op.tx, agent_id)
    if agent is None or (who.kind == "account" and who.id != agent.account_id):
        raise NotFound(f"no agent {agent_id!r}")
    account = await repo.get_account(op.tx, agent.account_id)
    assert account is not None  # a foreign key guarantees it
    return account, agent
