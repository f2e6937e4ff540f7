"""What relays ask of billing: the sync of usage and leases, and the agents they serve.

Invariants:
- A sync report runs in one transaction under the key `sync:<relay>:<seq>`
  (the rules are in `sync`); its changes reach relays only after the commit.
- Relays learn every agent's state and its keys not revoked, nothing about
  money; a support agent is always active for them.
- Per-tunnel usage is read back exactly as the reports summed it.
- After each sync commits, what it asked for and did not get is noted
  (`Waiting`): a later purchase grants those relays at once (`Plans`).
"""

from __future__ import annotations

from collections import Counter

from quota.billing import repo
from quota.billing.auth import Principal
from quota.billing.op import Op
from quota.billing.repo import TunnelUsage
from quota.billing.runner import Runner
from quota.billing.sync import apply_sync
from quota.billing.waiting import Waiting
from quota.contract import wire
from quota.core.billing import AgentRole


class Relays:
    """The relay-facing part of billing."""

    def __init__(self, runner: Runner, waiting: Waiting | None = None) -> None:
        self._runner = runner
        self.waiting = waiting if waiting is not None else Waiting()
        # reports and agent deltas taken in by this process (metrics read them)
        self.ingested: Counter[str] = Counter()

    async def sync(self, who: Principal, req: wire.SyncRequest) -> wire.SyncAnswer:
        """Apply one relay sync once (usage, returns, lease requests); answer its leases."""

        unmet: dict[str, int] = {}

        async def run(op: Op) -> wire.SyncAnswer:
            unmet.clear()  # a retried transaction starts over
            return await apply_sync(op, who.id, req, unmet)

        answer = await self._runner.run(f"sync:{who.id}:{req.seq}", run)
        self.waiting.note(who.id, unmet)
        self.ingested["duplicate_reports" if answer.duplicate else "reports"] += 1
        if not answer.duplicate:
            self.ingested["agent_deltas"] += len(req.items)
        return answer

    async def agents(self) -> wire.RelayAgentList:
        """Every agent of every account, with its state and its keys not revoked."""

        async def run(op: Op) -> wire.RelayAgentList:
            keys = await repo.live_keys(op.tx)
            return wire.RelayAgentList(
                agents=[
                    wire.RelayAgent(
                        id=a.id,
                        account_id=a.account_id,
                        name=a.name,
                        role=AgentRole(a.role),
                        status="active" if a.active or not AgentRole(a.role).pays else "inactive",
                        public_keys=keys.get(a.id, []),
                    )
                    for a in await repo.all_agent_briefs(op.tx)
                ]
            )

        return await self._runner.read(run)

    async def tunnel_usage(self, agent_id: str) -> list[TunnelUsage]:
        """Everything relays reported for each tunnel of this agent, by tunnel id."""

        async def run(op: Op) -> list[TunnelUsage]:
            return await repo.tunnel_usage_of(op.tx, agent_id)

        return await self._runner.read(run)
