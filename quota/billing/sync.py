"""The relay sync: usage, lease returns and lease requests of one relay, in one transaction.

Invariants (everything below runs inside the caller's one transaction):
- A report `(relay_id, seq)` is applied at most once; sent again (retry,
  reorder, duplicate) it is answered with its first answer marked `duplicate`
  and changes nothing, not even lease validity. A seq number already used by
  `/v1/usage` is refused (409), so one number is never applied twice.
- Usage is charged exactly as `charging.apply_usage` charges it; every byte a
  relay reports is also added to that relay's lease `used_total`.
- The sum over relays of an agent's outstanding leases never exceeds what the
  agent can pay for when a grant is made (`quota.core.lease.grant_size`).
  A lease that expired before this report is written off (its remainder counts
  as returned) after the report's own deltas are applied, so a relay that
  comes back late cannot revive bytes promised elsewhere.
- Every report extends all of the relay's leases to `now + lease_ttl`.
- Unknown agents are answered with status "unknown", never refused: one bad id
  must not stall a relay.
- The agents, accounts and leases a report names are read in a few statements
  up front (`_Rows`), not per agent; what each agent's part reads is the same as
  if it had read them itself (see `_Rows`). Lease writes are sent in one batch,
  always before any statement reads leases, so no read sees a stale lease.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import structlog

from quota.billing import charging, repo
from quota.billing.errors import Conflict
from quota.billing.op import Op
from quota.billing.repo import AccountRow, AgentRow
from quota.contract import wire
from quota.core.billing import AgentRole
from quota.core.lease import LeaseTotals, capacity, grant_size, metered_reserve, shortfall
from quota.core.money import metered_rate

log = structlog.get_logger("quota.billing")


@dataclass(slots=True)
class _Ask:
    """One agent's merged part of a report."""

    nbytes: int = 0
    seconds: int = 0
    want: int = 0
    returned: int = 0


def _merge(req: wire.SyncRequest) -> dict[str, _Ask]:
    asks: dict[str, _Ask] = {}
    for item in req.items:
        ask = asks.setdefault(item.agent_id, _Ask())
        ask.nbytes += item.bytes
        ask.seconds += item.tunnel_seconds
    for lease in req.leases:
        ask = asks.setdefault(lease.agent_id, _Ask())
        ask.want += lease.want
        ask.returned += lease.returned
    return asks


def fingerprint(req: wire.SyncRequest) -> str:
    return hashlib.sha256(json.dumps(wire.dump(req), sort_keys=True).encode()).hexdigest()


async def _leases(op: Op, relay_id: str, agent_ids: list[str]) -> dict[str, LeaseTotals]:
    """This relay's stored leases of these agents, read in a few statements, not one each."""
    found: dict[str, LeaseTotals] = {}
    for at in range(0, len(agent_ids), repo.IN_CHUNK):
        chunk = agent_ids[at : at + repo.IN_CHUNK]
        for agent_id, g, u, r, v in await op.tx.all(
            "SELECT agent_id, granted_total, used_total, returned_total, valid_until FROM leases"
            f" WHERE relay_id = ? AND agent_id IN ({', '.join('?' * len(chunk))})",
            (relay_id, *chunk),
        ):
            found[agent_id] = LeaseTotals(
                granted_total=g, used_total=u, returned_total=r, valid_until=v
            )
    return found


_SAVE_LEASE = (
    "INSERT INTO leases (relay_id, agent_id, granted_total, used_total, returned_total,"
    " valid_until) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (relay_id, agent_id) DO UPDATE SET"
    " granted_total = excluded.granted_total, used_total = excluded.used_total,"
    " returned_total = excluded.returned_total, valid_until = excluded.valid_until"
)


async def _outstanding(op: Op, agent_id: str) -> int:
    """Bytes all relays' valid leases of the agent still promise."""
    row = await op.tx.one(
        "SELECT COALESCE(SUM(MAX(0, granted_total - used_total - returned_total)), 0)"
        " FROM leases WHERE agent_id = ? AND valid_until > ?",
        (agent_id, op.now),
    )
    return int(row[0]) if row else 0


async def _reserved(op: Op, agent: AgentRow) -> int:
    """Millicoins other agents of the account may draw for leases beyond their traffic."""
    rate = metered_rate(op.config.metered_price_per_gb)
    held = {  # what `_outstanding` answers for each agent of the account, in one statement
        str(a): int(n)
        for a, n in await op.tx.all(
            "SELECT agent_id, COALESCE(SUM(MAX(0, granted_total - used_total - returned_total)), 0)"
            " FROM leases WHERE agent_id IN (SELECT id FROM agents WHERE account_id = ?)"
            " AND valid_until > ? GROUP BY agent_id",
            (agent.account_id, op.now),
        )
    }
    total = 0
    for other in await repo.agents_of(op.tx, agent.account_id):
        if other.id != agent.id:
            total += metered_reserve(held.get(other.id, 0) - other.traffic, rate)
    return total


async def _capacity(op: Op, account: AccountRow, agent: AgentRow) -> int:
    return capacity(
        traffic=agent.traffic,
        metered=agent.allow_metered and not account.frozen,
        balance=account.balance,
        rate=metered_rate(op.config.metered_price_per_gb),
        carry=agent.metered_carry,
        reserved=await _reserved(op, agent),
    )


async def _grant(
    op: Op, account: AccountRow, agent: AgentRow, want: int
) -> tuple[int, AccountRow, AgentRow]:
    """Bytes to add to this relay's lease, after an auto top-up for a shortfall if set."""
    cap, held = await _capacity(op, account, agent), await _outstanding(op, agent.id)
    short = shortfall(want=want, capacity=cap, outstanding=held)
    if short and agent.topup_package:
        # exactly the missing bytes, with no low-water margin: one purchase, no loop
        account, agent = await charging.auto_topup(
            op, account, agent, need=agent.traffic + short, low_water=0
        )
        cap = await _capacity(op, account, agent)
    return grant_size(want=want, capacity=cap, outstanding=held), account, agent


@dataclass(slots=True)
class _Rows:
    """The rows a report touches, read once for the whole report and kept up to date.

    An agent's row and its lease on this relay change only in that agent's part
    of the report; an account's row changes only through the rows charging
    returns, which are put back here. So each part finds what it would have read.
    """

    agents: dict[str, AgentRow]
    accounts: dict[str, AccountRow]
    leases: dict[str, LeaseTotals]
    unsaved: dict[str, LeaseTotals] = field(default_factory=dict)  # lease writes not sent yet

    def save_lease(self, agent_id: str, lease: LeaseTotals) -> None:
        """Write a lease, at the latest by the next `flush` (always before leases are read)."""
        self.leases[agent_id] = self.unsaved[agent_id] = lease

    async def flush(self, op: Op, relay_id: str) -> None:
        """Send the lease writes held back, in one statement."""
        if self.unsaved:
            await op.tx.run_many(
                _SAVE_LEASE,
                [
                    (relay_id, a, x.granted_total, x.used_total, x.returned_total, x.valid_until)
                    for a, x in self.unsaved.items()
                ],
            )
            self.unsaved.clear()

    @classmethod
    async def read(cls, op: Op, relay_id: str, agent_ids: list[str]) -> _Rows:
        agents = await repo.agents_by_id(op.tx, agent_ids)
        accounts = await repo.accounts_by_id(op.tx, sorted({a.account_id for a in agents.values()}))
        return cls(agents, accounts, await _leases(op, relay_id, agent_ids))


async def _one_agent(op: Op, relay_id: str, agent_id: str, ask: _Ask, rows: _Rows) -> wire.Lease:
    """One agent's part of a report."""
    agent = rows.agents.get(agent_id)
    valid_until = op.now + op.config.lease_ttl_ms
    if agent is None:
        return wire.Lease(
            agent_id=agent_id,
            status="unknown",
            granted_total=0,
            valid_until=valid_until,
            traffic_remaining=0,
            unbilled_bytes=ask.nbytes,
        )
    account = rows.accounts[agent.account_id]  # a foreign key guarantees it
    item = wire.UsageItem(agent_id=agent_id, bytes=ask.nbytes, tunnel_seconds=ask.seconds)
    account, agent, grant = await charging.apply_usage(op, account, agent, item)
    rows.accounts[account.id] = account
    if not AgentRole(agent.role).pays:  # support agents pay nothing and need no lease
        return wire.Lease(
            agent_id=agent_id,
            status="active",
            granted_total=0,
            valid_until=valid_until,
            traffic_remaining=0,
            unbilled_bytes=0,
        )
    stored = rows.leases.get(agent_id)
    if stored is None:
        stored = LeaseTotals(valid_until=op.now)
    lease = stored.report(used=ask.nbytes, returned=ask.returned)
    lease = lease.expire(op.now).extend(valid_until)
    rows.save_lease(agent_id, lease)
    if ask.want and agent.active:
        await rows.flush(op, relay_id)  # `_grant` reads leases, this agent's and others'
        more, account, agent = await _grant(op, account, agent, ask.want)  # maybe a top-up
        rows.accounts[account.id] = account
        lease = lease.grant(more)
        rows.save_lease(agent_id, lease)
    return wire.Lease(
        agent_id=agent_id,
        status="active" if agent.active else "inactive",
        granted_total=lease.granted_total,
        valid_until=valid_until,
        traffic_remaining=agent.traffic,
        unbilled_bytes=grant.unbilled_bytes,
    )


async def apply_sync(op: Op, relay_id: str, req: wire.SyncRequest) -> Any:
    """Apply one relay report once; answer the relay's leases and the automatic top-ups."""
    row = await op.tx.one(
        "SELECT kind, fingerprint, body FROM usage_reports WHERE relay_id = ? AND seq = ?",
        (relay_id, req.seq),
    )
    if row is not None:
        kind, first, body = row
        if kind != "sync":
            raise Conflict(f"seq: {req.seq} of relay {relay_id} was a /v1/usage report")
        if first != fingerprint(req):  # answered as the brief says, but worth an alarm
            log.warning("billing_sync_seq_reused", relay_id=relay_id, seq=req.seq)
        return {**json.loads(body), "duplicate": True}
    asks = _merge(req)
    rows = await _Rows.read(op, relay_id, list(asks))
    leases = [await _one_agent(op, relay_id, a, ask, rows) for a, ask in asks.items()]
    await rows.flush(op, relay_id)
    await _expire_relay(op, relay_id)  # the leases this report did not name
    await op.tx.run(
        "UPDATE leases SET valid_until = ? WHERE relay_id = ?",
        (op.now + op.config.lease_ttl_ms, relay_id),
    )
    body = wire.dump(
        wire.SyncAnswer(
            relay_id=relay_id, seq=req.seq, duplicate=False, leases=leases, topups=op.topups
        )
    )
    await op.tx.run(
        "INSERT INTO usage_reports (relay_id, seq, body, at, kind, fingerprint)"
        " VALUES (?, ?, ?, ?, 'sync', ?)",
        (relay_id, req.seq, json.dumps(body), op.now, fingerprint(req)),
    )
    return body


async def _expire_relay(op: Op, relay_id: str) -> None:
    """Write off the remainder of this relay's leases that expired before this report."""
    await op.tx.run(
        "UPDATE leases SET returned_total = MAX(returned_total, granted_total - used_total)"
        " WHERE relay_id = ? AND valid_until <= ?",
        (relay_id, op.now),
    )


async def relay_agents(op: Op) -> wire.RelayAgentList:
    """Every agent of every account, with its state and its keys not revoked."""
    keys: dict[str, list[str]] = {}
    for agent_id, public_key in await op.tx.all(
        "SELECT agent_id, public_key FROM agent_keys WHERE revoked_at IS NULL ORDER BY rowid"
    ):
        keys.setdefault(str(agent_id), []).append(str(public_key))
    rows = await op.tx.all(
        "SELECT id, account_id, name, role, active FROM agents ORDER BY account_id, created_at, id"
    )
    return wire.RelayAgentList(
        agents=[
            wire.RelayAgent(
                id=i,
                account_id=acc,
                name=name,
                role=role,
                status="active" if active or not AgentRole(role).pays else "inactive",
                public_keys=keys.get(i, []),
            )
            for i, acc, name, role, active in rows
        ]
    )
