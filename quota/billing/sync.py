"""The relay sync: usage, lease returns and lease requests of one relay, in one transaction.

Invariants (everything below runs inside the caller's one transaction):
- A report `(relay_id, seq)` is applied at most once; sent again (retry,
  reorder, duplicate) it is answered with its first answer marked `duplicate`
  and changes nothing, not even lease validity. The seq is an idempotency key:
  the same seq with another body (a digest of it is kept) is refused with 409.
  A seq number a database recorded for the old `/v1/usage` is refused (409),
  so one number is never applied twice.
- Usage is charged exactly as `charging.apply_usage` charges it; every byte a
  relay reports is also added to that relay's lease `used_total`, and to the
  per-tunnel totals of the tunnel it names (`tunnel_id`).
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

from dataclasses import dataclass, field
from typing import Literal

import structlog

from quota.billing import charging, repo
from quota.billing.errors import Conflict, KeyReused
from quota.billing.op import Op
from quota.billing.repo import AccountRow, AgentRow, TunnelUsage
from quota.billing.runner import body_of, fingerprint, read_body
from quota.contract import wire
from quota.core.billing import AgentRole
from quota.core.lease import LeaseTotals, capacity, grant_size, metered_reserve, shortfall
from quota.core.money import MAX_COUNTER, checked_add, metered_rate

log = structlog.get_logger("quota.billing")


@dataclass(slots=True)
class _Ask:
    """One agent's merged part of a report."""

    nbytes: int = 0
    seconds: int = 0
    want: int = 0
    returned: int = 0


def _sum(total: int, delta: int, what: str) -> int:
    return checked_add(total, delta, what=what, limit=MAX_COUNTER)


def _merge(req: wire.SyncRequest) -> dict[str, _Ask]:
    """Each agent's part of a report; a sum past 2**62 is refused (`OverLimit`)."""
    asks: dict[str, _Ask] = {}
    for item in req.items:
        ask = asks.setdefault(item.agent_id, _Ask())
        ask.nbytes = _sum(ask.nbytes, item.bytes, "a report's bytes of one agent")
        ask.seconds = _sum(ask.seconds, item.tunnel_seconds, "a report's seconds of one agent")
    for lease in req.leases:
        ask = asks.setdefault(lease.agent_id, _Ask())
        ask.want = _sum(ask.want, lease.want, "a report's want of one agent")
        ask.returned = _sum(ask.returned, lease.returned, "a report's returns of one agent")
    return asks


def _per_tunnel(req: wire.SyncRequest, known: dict[str, AgentRow], now: int) -> list[TunnelUsage]:
    """The report's usage of each tunnel of a known agent, summed per (agent, tunnel)."""
    totals: dict[tuple[str, str], list[int]] = {}
    for item in req.items:
        if item.agent_id in known and (item.bytes or item.tunnel_seconds):
            total = totals.setdefault((item.agent_id, item.tunnel_id), [0, 0])
            total[0] += item.bytes
            total[1] += item.tunnel_seconds
    return [
        TunnelUsage(agent_id=a, tunnel_id=t, bytes=b, tunnel_seconds=s, first_at=now, last_at=now)
        for (a, t), (b, s) in totals.items()
    ]


async def _reserved(op: Op, agent: AgentRow) -> int:
    """Millicoins other agents of the account may draw for leases beyond their traffic."""
    rate = metered_rate(op.config.metered_price_per_gb)
    held = await repo.outstanding_by_agent(op.tx, agent.account_id, op.now)
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
    cap = await _capacity(op, account, agent)
    held = await repo.outstanding(op.tx, agent.id, op.now)
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
            await repo.save_leases(op.tx, relay_id, self.unsaved)
            self.unsaved.clear()

    @classmethod
    async def read(cls, op: Op, relay_id: str, agent_ids: list[str]) -> _Rows:
        agents = await repo.agents_by_id(op.tx, agent_ids)
        accounts = await repo.accounts_by_id(op.tx, sorted({a.account_id for a in agents.values()}))
        return cls(agents, accounts, await repo.leases_of(op.tx, relay_id, agent_ids))


def _lease(
    agent_id: str,
    status: Literal["active", "inactive", "unknown"],
    valid_until: int,
    *,
    granted_total: int = 0,
    traffic_remaining: int = 0,
    unbilled_bytes: int = 0,
) -> wire.Lease:
    return wire.Lease(
        agent_id=agent_id,
        status=status,
        granted_total=granted_total,
        valid_until=valid_until,
        traffic_remaining=traffic_remaining,
        unbilled_bytes=unbilled_bytes,
    )


async def _one_agent(op: Op, relay_id: str, agent_id: str, ask: _Ask, rows: _Rows) -> wire.Lease:
    """One agent's part of a report."""
    agent = rows.agents.get(agent_id)
    valid_until = op.now + op.config.lease_ttl_ms
    if agent is None:
        return _lease(agent_id, "unknown", valid_until, unbilled_bytes=ask.nbytes)
    account = rows.accounts[agent.account_id]  # a foreign key guarantees it
    charged = await charging.apply_usage(op, account, agent, nbytes=ask.nbytes, seconds=ask.seconds)
    account, agent = charged.account, charged.agent
    rows.accounts[account.id] = account
    if not AgentRole(agent.role).pays:  # support agents pay nothing and need no lease
        return _lease(agent_id, "active", valid_until)
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
    return _lease(
        agent_id,
        "active" if agent.active else "inactive",
        valid_until,
        granted_total=lease.granted_total,
        traffic_remaining=agent.traffic,
        unbilled_bytes=charged.unbilled,
    )


async def _answered(op: Op, relay_id: str, req: wire.SyncRequest) -> wire.SyncAnswer | None:
    """The first answer to this report number, marked duplicate, if it was applied before."""
    found = await repo.find_report(op.tx, relay_id, req.seq)
    if found is None:
        return None
    if found.kind != "sync":
        raise Conflict(f"seq: {req.seq} of relay {relay_id} was a /v1/usage report")
    if found.fingerprint != fingerprint(wire.dump(req)):
        log.warning("billing_sync_seq_reused", relay_id=relay_id, seq=req.seq)
        raise KeyReused(
            f"seq: {req.seq} of relay {relay_id} was already applied with another body;"
            " a report is sent again unchanged or under a new seq"
        )
    first = read_body(wire.SyncAnswer, found.body)
    return wire.SyncAnswer(
        relay_id=first.relay_id,
        seq=first.seq,
        duplicate=True,
        leases=first.leases,
        topups=first.topups,
    )


async def apply_sync(op: Op, relay_id: str, req: wire.SyncRequest) -> wire.SyncAnswer:
    """Apply one relay report once; answer the relay's leases and the automatic top-ups."""
    first = await _answered(op, relay_id, req)
    if first is not None:
        return first
    op.numbered = False  # a report is answered with leases, not entries: write them in batches
    asks = _merge(req)
    rows = await _Rows.read(op, relay_id, list(asks))
    leases = [await _one_agent(op, relay_id, a, ask, rows) for a, ask in asks.items()]
    await rows.flush(op, relay_id)
    await repo.expire_relay(op.tx, relay_id, op.now)  # the leases this report did not name
    await repo.extend_relay(op.tx, relay_id, op.now + op.config.lease_ttl_ms)
    await repo.add_tunnel_usage(op.tx, _per_tunnel(req, rows.agents, op.now))
    answer = wire.SyncAnswer(
        relay_id=relay_id, seq=req.seq, duplicate=False, leases=leases, topups=op.topups
    )
    report = repo.Report(kind="sync", fingerprint=fingerprint(wire.dump(req)), body=body_of(answer))
    await repo.save_report(op.tx, relay_id, req.seq, report, op.now)
    return answer
