"""Fair shares on one relay: the limits in force for an agent, and what each holder took.

Invariants:
- Counting and deciding are quota.core.shares': this module only finds the
  limits in force for an agent (the config's `[shares]`, overridden by the
  agent's registry entry `limits`) and turns a refusal into `relay.errors.Refused`
  with its cause.
- `limit(agent, name)` is the one lookup of a limit for an agent; a registry
  change takes effect at the agent's next acquisition, never taking back what
  it holds.
- Whoever takes a share keeps the `Held` it got and gives it back exactly once.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from quota.core.shares import Refused as Refusal
from quota.core.shares import Share, ShareLimits, Shares
from relay.errors import Refused
from relay.registry import Agent


@dataclass(frozen=True, slots=True, kw_only=True)
class Held:
    """One share taken: give it back with `FairShares.release`."""

    share: Share
    agent_id: str
    scope: Hashable | None


class FairShares:
    """The relay's fair shares: config defaults, per-agent overrides, counts."""

    def __init__(self, defaults: ShareLimits | None = None) -> None:
        self.counts = Shares(defaults)
        self._applied: dict[str, tuple[tuple[str, int], ...]] = {}  # agent id -> its overrides

    def limits_for(self, agent: Agent) -> ShareLimits:
        if self._applied.get(agent.agent_id, ()) != agent.limits:
            mine = self.counts.defaults.overridden(dict(agent.limits)) if agent.limits else None
            self.counts.set_limits(agent.agent_id, mine)
            self._applied[agent.agent_id] = agent.limits
        return self.counts.limits_for(agent.agent_id)

    def limit(self, agent: Agent, name: str | Share) -> int:
        """The limit of share `name` (a `[shares]` key) in force for `agent`."""
        return self.limits_for(agent).limit(Share(name) if isinstance(name, str) else name)

    async def ask(self, share: Share, agent_id: str) -> None:
        """Before a take that may wait: a relay of workers asks its supervisor first.

        Raises Refused when the relay as a whole has the limit; a lone relay asks
        no one (its own counts are the relay's). Follow with `settle`.
        """

    def settle(self, share: Share, agent_id: str) -> None:
        """After the take that `ask` was for, taken or not (what was not taken goes back)."""

    def take(self, share: Share, agent: Agent, scope: Hashable | None = None) -> Held:
        """Take one of `share`; raise Refused (with its cause) when `agent` has its limit."""
        self.limits_for(agent)
        got = self.counts.acquire(share, agent=agent.agent_id, scope=scope)
        if isinstance(got, Refusal):
            raise Refused(got.message, cause=got.cause.value)
        return Held(share=share, agent_id=agent.agent_id, scope=scope)

    def release(self, held: Held) -> None:
        self.counts.release(held.share, agent=held.agent_id, scope=held.scope)
