"""The relay sync: usage, lease returns and lease requests of one relay, in one transaction.

Invariants (everything below runs inside the caller's one transaction):
- A report `(relay_id, seq)` is applied at most once; sent again (retry,
  reorder, duplicate) it is answered with its first answer marked `duplicate`
  and changes nothing, not even lease validity. The seq is an idempotency key:
  the same seq with another body (a digest of it is kept) is refused with 409.
  A seq number a database recorded for the old `/v1/usage` is refused (409),
  so one number is never applied twice.
- Set-based: the rows a report names are read in a few statements, each
  agent's charge and lease are decided in memory, and the results are written
  with one statement per table (`Bulk`), whatever the number of agents. An
  agent whose charge buys something or charges time (tunnel time, an auto
  top-up) is charged on its own by `charging.apply_usage`; for every other
  agent the report does what `apply_usage` would: draw bucket, then packages,
  then metered traffic from the balance (`draw_traffic`), posting the metered
  entry at once and writing the balances drawn once, with their version checks,
  at the end (`save_balances`); a low-balance notice is checked once per
  account the report drew from, after all its charges.
- Usage is charged for all agents first, in report order; then lease requests
  are answered in report order, each seeing every charge of the report and the
  grants before it. Every byte a relay reports is also added to that relay's
  lease `used_total`, to the per-tunnel totals of the tunnel it names, and to
  the audit log of raw usage (`usage_log`).
- The sum over relays of an agent's outstanding leases never exceeds what the
  agent can pay for when a grant is made (`quota.core.lease.grant_size`).
  A lease that expired before this report is written off (its remainder counts
  as returned) after the report's own deltas are applied, so a relay that
  comes back late cannot revive bytes promised elsewhere.
- Every report extends all of the relay's leases to `now + lease_ttl`.
- Unknown agents are answered with status "unknown", never refused: one bad id
  must not stall a relay.
- A purchase may grant a relay that waits for the agent (`grant_waiting`), by
  the same rules and in the purchase's transaction, and push it that lease; the
  lease's totals are cumulative, so the relay's next answer never grants it twice.
- Traffic drawn from bucket and packages goes to the agent's open roll-up
  window when `ledger.traffic_rollup` is set (`repo.rollup`); windows that
  ended are closed into the ledger first, so an open window is the current one.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

import msgspec
import structlog

from quota.billing import charging, repo
from quota.billing.errors import Conflict, KeyReused
from quota.billing.op import Op, check_low_balance
from quota.billing.repo import AccountRow, AgentRow
from quota.billing.runner import fingerprint, read_body
from quota.contract import wire
from quota.core.billing import (
    AgentRole,
    PlanKind,
    TopupOutcome,
    decide_topup,
    draw_held,
    draw_traffic,
    roll_up,
)
from quota.core.lease import after_report, capacity, grant_size, metered_reserve, shortfall
from quota.core.money import MAX_COUNTER, MS_PER_MONTH, OverLimit, Rate, checked_add, metered_rate

log = structlog.get_logger("quota.billing")
_ENCODER = msgspec.json.Encoder()
_PAYING = frozenset(r.value for r in AgentRole if r.pays)  # thousands of lookups a report


@dataclass(slots=True)
class _Ask:
    """One agent's merged part of a report."""

    nbytes: int = 0
    seconds: int = 0
    want: int = 0
    returned: int = 0


def _merge(req: wire.SyncRequest) -> dict[str, _Ask]:
    """Each agent's part of a report; a sum past 2**62 is refused (`OverLimit`)."""
    asks: dict[str, _Ask] = {}
    for item in req.items:
        ask = asks.get(item.agent_id)
        if ask is None:
            ask = asks[item.agent_id] = _Ask()
        ask.nbytes += item.bytes
        ask.seconds += item.tunnel_seconds
    for lease in req.leases:
        ask = asks.get(lease.agent_id)
        if ask is None:
            ask = asks[lease.agent_id] = _Ask()
        ask.want += lease.want
        ask.returned += lease.returned
    for ask in asks.values():  # each term is at most 2**62: the sums are exact, then checked
        for total, what in (
            (ask.nbytes, "a report's bytes of one agent"),
            (ask.seconds, "a report's seconds of one agent"),
            (ask.want, "a report's want of one agent"),
            (ask.returned, "a report's returns of one agent"),
        ):
            if total > MAX_COUNTER:
                raise OverLimit(what, MAX_COUNTER)
    return asks


def _per_tunnel(req: wire.SyncRequest, known: dict[str, AgentRow]) -> list[repo.Delta]:
    """The report's usage of each tunnel of a known agent, summed per (agent, tunnel)."""
    totals: dict[tuple[str, str], list[int]] = {}
    for item in req.items:
        if (item.bytes or item.tunnel_seconds) and item.agent_id in known:
            total = totals.get((item.agent_id, item.tunnel_id))
            if total is None:
                totals[(item.agent_id, item.tunnel_id)] = [item.bytes, item.tunnel_seconds]
            else:
                total[0] += item.bytes
                total[1] += item.tunnel_seconds
    return [(a, t, b, s) for (a, t), (b, s) in totals.items()]


def _traffic(agent: AgentRow) -> repo.Traffic:
    """What a report may change of an agent's row, as `repo.save_traffic` writes it."""
    return (
        agent.bucket_bytes,
        agent.package_bytes,
        agent.metered_carry,
        agent.open_used,
        agent.open_from,
        agent.open_until,
    )


@dataclass(slots=True)
class _Report:
    """What one report reads once and changes in memory, then writes in a few statements.

    `agents` holds each agent's row as last saved, `traffic` what the report
    changed since: bucket, packages, carry and the open roll-up window (written
    by `save`); `row` joins the two whenever one agent's part runs through the
    charging rules one at a time.
    """

    op: Op
    relay_id: str
    rate: Rate
    agents: dict[str, AgentRow]
    accounts: dict[str, AccountRow]
    leases: dict[str, tuple[int, int, int, int]]  # granted, used, returned, valid_until here
    stored: dict[str, int] = field(default_factory=dict)  # pre-report outstanding here
    traffic: dict[str, repo.Traffic] = field(default_factory=dict)
    unbilled: dict[str, int] = field(default_factory=dict)
    # balances drawn in memory (account id -> its version then), written by `save`
    # unless the charging rules saved the account since (its version moved)
    drawn: dict[str, int] = field(default_factory=dict)
    unmet: dict[str, int] = field(default_factory=dict)  # agent -> asked and not granted

    @classmethod
    async def read(cls, op: Op, relay_id: str, agent_ids: list[str]) -> _Report:
        agents, leases = await repo.agents_with_leases(op.tx, relay_id, agent_ids)
        accounts = await repo.accounts_by_id(op.tx, sorted({a.account_id for a in agents.values()}))
        rate = metered_rate(op.config.metered_price_per_gb)
        report = cls(op, relay_id, rate, agents, accounts, leases)
        report.stored = {
            a: max(0, g - u - r) for a, (g, u, r, until) in leases.items() if until > op.now
        }
        return report

    def row(self, agent_id: str) -> AgentRow:
        """The agent's row as the report left it so far (still written by `save`)."""
        agent = self.agents[agent_id]
        changed = self.traffic.get(agent_id)
        if changed is not None and changed != _traffic(agent):
            bucket, packages, carry, used, start, end = changed
            agent = dataclasses.replace(
                agent,
                bucket_bytes=bucket,
                package_bytes=packages,
                metered_carry=carry,
                open_used=used,
                open_from=start,
                open_until=end,
            )
            self.agents[agent_id] = agent
        return agent

    def current(self, agent: AgentRow) -> repo.Traffic:
        changed = self.traffic.get(agent.id)
        return _traffic(agent) if changed is None else changed

    def traffic_of(self, agent: AgentRow) -> int:
        changed = self.traffic.get(agent.id)
        return agent.traffic if changed is None else changed[0] + changed[1]

    def carry_of(self, agent: AgentRow) -> int:
        return self.current(agent)[2]

    def took(self, account: AccountRow, agent: AgentRow) -> None:
        """Keep the rows the charging rules left; the agent's traffic is written by `save`.

        Also when the rules saved nothing (an auto top-up that bought nothing):
        what the report drew before them must not be lost.
        """
        self.accounts[account.id] = account
        self.agents[agent.id] = agent
        self.traffic[agent.id] = _traffic(agent)

    async def check_balances(self) -> None:
        """A low-balance notice, once per account whose balance the report drew."""
        for account_id in self.drawn:
            account = await check_low_balance(self.op, self.accounts[account_id])
            self.accounts[account_id] = account

    async def save(self) -> None:
        """Write what the report changed in memory: balances, traffic drawn, leases."""
        tx = self.op.tx
        await repo.save_balances(
            tx, [a for i, v in self.drawn.items() if (a := self.accounts[i]).version == v]
        )
        await repo.save_traffic(tx, [(*t, a) for a, t in self.traffic.items()])
        await repo.save_lease_totals(tx, self.relay_id, self.leases)


def _simple(op: Op, report: _Report, agent: AgentRow, ask: _Ask) -> bool:
    """Whether `apply_usage` would only draw bucket and packages (no money, no purchase)."""
    account = report.accounts[agent.account_id]
    if ask.seconds and agent.active:
        plan = op.config.catalogue.plans.get(agent.plan or "")
        if plan is not None and plan.kind is PlanKind.TUNNEL_TIME:
            return False  # tunnel time is charged
    if not ask.nbytes or account.frozen or not agent.active or not agent.topup_package:
        return True
    package = op.config.catalogue.packages.get(agent.topup_package)
    if package is None:
        return True  # the package left the catalogue: auto top-up is off
    if agent.active_until is None and op.now - agent.topup_since >= MS_PER_MONTH:
        return False  # the top-up limit's 30 days start again: saved
    traffic = report.traffic_of(agent)
    decision = decide_topup(
        remaining=traffic,
        need=ask.nbytes,
        low_water=agent.topup_below,
        package=package,
        limit=agent.topup_limit,
        spent=agent.topup_spent,
        balance=account.balance,
        blocked=agent.topup_blocked,
    )
    return decision.outcome not in (TopupOutcome.BUY, TopupOutcome.BALANCE_SHORT)


async def _draw(op: Op, report: _Report, agent: AgentRow, need: int) -> None:
    """Draw `need` bytes: bucket and packages in memory, metered traffic posted at once."""
    bucket, packages, carry, used, start, end = report.current(agent)
    held = draw_held(need, bucket, packages)
    if held is not None:
        from_bucket, from_packages, unbilled = *held, 0
    else:
        account = report.accounts[agent.account_id]
        draw = draw_traffic(
            need=need,
            bucket=bucket,
            packages=packages,
            metered=agent.allow_metered and not account.frozen,
            balance=account.balance,
            rate=report.rate,
            carry=carry,
        )
        from_bucket, from_packages, unbilled, carry = (
            draw.from_bucket,
            draw.from_packages,
            draw.unbilled,
            draw.carry,
        )
        if draw.metered_bytes:  # its entry now, the balance written once a report (`save`)
            account = await charging.post_metered(
                op, account, agent, draw.metered_bytes, draw.cost, deferred=True
            )
            report.accounts[account.id] = account
            if draw.cost:  # a charge (not all carry): the balance to write, a notice to check
                report.drawn[account.id] = account.version
    drawn = from_bucket + from_packages
    window = (used, start, end)
    if drawn and op.config.traffic_rollup_ms:
        window = roll_up(window, drawn, now=op.now, length=op.config.traffic_rollup_ms)
    elif drawn:
        account = report.accounts[agent.account_id]
        report.accounts[account.id] = await charging.post_traffic(op, account, agent, drawn)
    report.traffic[agent.id] = (bucket - from_bucket, packages - from_packages, carry, *window)
    if unbilled:
        report.unbilled[agent.id] = unbilled


async def _charge(op: Op, report: _Report, agent_id: str, ask: _Ask) -> None:
    """Charge one agent's usage: in memory when only traffic is drawn, else by the rules."""
    agent = report.agents[agent_id]
    if agent.role not in _PAYING:
        return
    if _simple(op, report, agent, ask):
        if ask.nbytes:
            await _draw(op, report, agent, ask.nbytes)
        return
    account = report.accounts[agent.account_id]
    charged = await charging.apply_usage(
        op, account, report.row(agent_id), nbytes=ask.nbytes, seconds=ask.seconds
    )
    report.took(charged.account, charged.agent)
    if charged.unbilled:
        report.unbilled[agent_id] = charged.unbilled


def _lease(report: _Report, agent_id: str, ask: _Ask, valid_until: int) -> None:
    """One report's deltas on this relay's lease of the agent: used, returned, expiry, validity."""
    before = report.leases.get(agent_id, (0, 0, 0, report.op.now))
    report.leases[agent_id] = after_report(
        before, used=ask.nbytes, returned=ask.returned, now=report.op.now, valid_until=valid_until
    )


class _Grants:
    """Lease requests answered in report order, over what all relays hold, kept in memory.

    `held` is each agent's outstanding over every relay as if this report's lease
    deltas were written; `reserve` the sum over an account's agents of what their
    leases beyond their own traffic may cost (`metered_reserve`), so what the
    other agents of its account reserve is that sum less the agent's own term,
    kept up to date as grants and top-ups change one agent at a time.
    """

    def __init__(self, report: _Report) -> None:
        self.report = report
        self.held: dict[str, int] = {}
        self.term: dict[str, int] = {}
        self.reserve: dict[str, int] = {}
        self.mates: dict[str, AgentRow] = {}

    async def read(self, wanting: list[str]) -> None:
        r, op = self.report, self.report.op
        metered = sorted(
            {
                r.agents[a].account_id
                for a in wanting
                if r.agents[a].allow_metered and not r.accounts[r.agents[a].account_id].frozen
            }
        )
        for mate in await repo.agents_of_accounts(op.tx, metered):
            self.mates[mate.id] = r.agents.get(mate.id, mate)
        ids = sorted({*wanting, *self.mates})
        stored = await repo.outstanding_of(op.tx, ids, op.now)
        for agent_id in ids:
            here = r.leases.get(agent_id)
            now_here = 0 if here is None else max(0, here[0] - here[1] - here[2])
            if agent_id not in r.leases:  # not named: its stored lease stands as it is
                now_here = r.stored.get(agent_id, 0)
            self.held[agent_id] = stored.get(agent_id, 0) - r.stored.get(agent_id, 0) + now_here
        for mate in self.mates.values():
            self._set_term(mate)

    def _set_term(self, agent: AgentRow) -> None:
        r = self.report
        old = self.term.get(agent.id, 0)
        new = metered_reserve(self.held.get(agent.id, 0) - r.traffic_of(agent), r.rate)
        self.term[agent.id] = new
        self.reserve[agent.account_id] = self.reserve.get(agent.account_id, 0) + new - old

    def _capacity(self, account: AccountRow, agent: AgentRow) -> int:
        r = self.report
        metered = agent.allow_metered and not account.frozen
        return capacity(
            traffic=r.traffic_of(agent),
            metered=metered,
            balance=account.balance,
            rate=r.rate,
            carry=r.carry_of(agent),
            reserved=self.reserve.get(agent.account_id, 0) - self.term.get(agent.id, 0)
            if metered
            else 0,
        )

    async def grant(self, agent_id: str, want: int, *, topup: bool = True) -> None:
        """Add to this relay's lease what the agent can pay for, after a top-up if set."""
        r, op = self.report, self.report.op
        agent = r.agents[agent_id]
        account = r.accounts[agent.account_id]
        cap = self._capacity(account, agent)
        held = self.held.get(agent_id, 0)
        short = shortfall(want=want, capacity=cap, outstanding=held)
        if short and topup and agent.topup_package:
            # exactly the missing bytes, with no low-water margin: one purchase, no loop
            traffic = r.traffic_of(agent)
            account, agent = await charging.auto_topup(
                op, account, r.row(agent_id), need=traffic + short, low_water=0
            )
            r.took(account, agent)
            cap = self._capacity(account, agent)
        more = grant_size(want=want, capacity=cap, outstanding=held)
        r.unmet[agent_id] = want - more
        if more:
            g, u, ret, until = r.leases[agent_id]
            g = checked_add(g, more, what="lease granted_total", limit=MAX_COUNTER)
            r.leases[agent_id] = (g, u, ret, until)
            self.held[agent_id] = held + more
        if agent_id in self.mates:  # its lease or its traffic changed: so did its term
            self._set_term(agent)


def _answer(report: _Report, agent_id: str, ask: _Ask, valid_until: int) -> wire.Lease:
    agent = report.agents.get(agent_id)
    if agent is None:  # nobody pays for an unknown agent's bytes
        return wire.Lease(
            agent_id=agent_id,
            status="unknown",
            granted_total=0,
            valid_until=valid_until,
            traffic_remaining=0,
            unbilled_bytes=ask.nbytes,
        )
    lease = report.leases.get(agent_id)
    return wire.Lease(
        agent_id=agent_id,
        status="active" if agent.active or agent.role not in _PAYING else "inactive",
        granted_total=0 if lease is None else lease[0],
        valid_until=valid_until,
        traffic_remaining=report.traffic_of(agent) if lease is not None else 0,
        unbilled_bytes=report.unbilled.get(agent_id, 0),
    )


def digest(req: wire.SyncRequest) -> str:
    """The digest a report is kept under: of its canonical JSON (fields in the message's order)."""
    return hashlib.sha256(_ENCODER.encode(req)).hexdigest()


async def _answered(op: Op, relay_id: str, req: wire.SyncRequest) -> wire.SyncAnswer | None:
    """The first answer to this report number, marked duplicate, if it was applied before."""
    found = await repo.find_report(op.tx, relay_id, req.seq)
    if found is None:
        return None
    if found.kind != "sync":
        raise Conflict(f"seq: {req.seq} of relay {relay_id} was a /v1/usage report")
    # reports kept before the canonical digest carry the digest of their sorted JSON
    if found.fingerprint not in (digest(req), fingerprint(wire.dump(req))):
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


async def apply_sync(
    op: Op, relay_id: str, req: wire.SyncRequest, unmet: dict[str, int] | None = None
) -> wire.SyncAnswer:
    """Apply one relay report once; answer the relay's leases and the automatic top-ups.

    `unmet` gets, for each agent the report names, the bytes it asked for and did
    not get (0: all, or no ask); nothing for a duplicate.
    """
    first = await _answered(op, relay_id, req)
    if first is not None:
        return first
    op.numbered = False  # a report is answered with leases, not entries: write them in batches
    await repo.close_due(op.tx, op.now)  # before any draw: an open window is the current one
    asks = _merge(req)
    report = await _Report.read(op, relay_id, list(asks))
    valid_until = op.now + op.config.lease_ttl_ms
    paying = []
    for agent_id, ask in asks.items():
        if agent_id in report.agents:
            await _charge(op, report, agent_id, ask)
            if report.agents[agent_id].role in _PAYING:
                _lease(report, agent_id, ask, valid_until)
                paying.append(agent_id)
    await report.check_balances()
    wanting = [a for a in paying if asks[a].want and report.agents[a].active]
    if wanting:
        grants = _Grants(report)
        await grants.read(wanting)
        for agent_id in wanting:
            await grants.grant(agent_id, asks[agent_id].want)
    await _write(op, report, req)
    if unmet is not None:
        unmet.update({a: report.unmet.get(a, 0) for a in asks})
    answer = wire.SyncAnswer(
        relay_id=relay_id,
        seq=req.seq,
        duplicate=False,
        leases=[_answer(report, a, ask, valid_until) for a, ask in asks.items()],
        topups=op.topups,
    )
    body = _ENCODER.encode(answer).decode()
    saved = repo.Report(kind="sync", fingerprint=digest(req), body=body)
    await repo.save_report(op.tx, relay_id, req.seq, saved, op.now)
    return answer


async def _write(op: Op, report: _Report, req: wire.SyncRequest) -> None:
    """Everything the report changed, a statement per table."""
    await report.save()
    await repo.expire_relay(op.tx, report.relay_id, op.now)  # the leases this report did not name
    await repo.extend_relay(op.tx, report.relay_id, op.now + op.config.lease_ttl_ms)
    deltas = _per_tunnel(req, report.agents)
    await repo.add_tunnel_usage(op.tx, deltas, op.now)
    owners = {a: agent.account_id for a, agent in report.agents.items()}
    await repo.log_usage(op.tx, report.relay_id, req.seq, op.now, deltas, owners)


async def grant_waiting(op: Op, relay_id: str, agent_id: str, want: int) -> wire.Lease | None:
    """Grant `relay_id`, which waits for `want` bytes of `agent_id`, what the agent can pay now.

    What the relay's next report would be granted for the same ask, by the same
    rules, in the caller's transaction (a purchase that just added traffic); the
    lease as a sync answer states it, or None when nothing was granted.
    """
    report = await _Report.read(op, relay_id, [agent_id])
    agent = report.agents.get(agent_id)
    if agent is None or agent.role not in _PAYING or not agent.active or want <= 0:
        return None
    valid_until = op.now + op.config.lease_ttl_ms
    _lease(report, agent_id, _Ask(), valid_until)
    before = report.leases[agent_id][0]
    grants = _Grants(report)
    await grants.read([agent_id])
    await grants.grant(agent_id, want, topup=False)  # the purchase is what it buys
    if report.leases[agent_id][0] == before:
        return None
    await report.save()
    return _answer(report, agent_id, _Ask(), valid_until)
