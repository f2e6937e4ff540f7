"""Relays waiting for an agent's bytes: what a sync could not grant, so a purchase can push it.

Invariants:
- A hint kept in this process's memory, never a promise: a restart or another
  replica has none, and then the relay's own sync after the push asks again
  (the round it always starts), so nothing depends on it but speed.
- `note` is called after a sync committed: an agent a relay asked for and got
  less is waiting there for the rest; any other answer to that relay about the
  agent (all granted, no ask) clears it.
- At most `limit` agents have waiting relays; the agent noted first goes first.
"""

from __future__ import annotations

from collections.abc import Mapping

LIMIT = 100_000


class Waiting:
    """agent -> relay -> the bytes that relay last asked for the agent and did not get."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._by_agent: dict[str, dict[str, int]] = {}  # in the order first noted

    def __len__(self) -> int:
        return len(self._by_agent)

    def note(self, relay_id: str, unmet: Mapping[str, int]) -> None:
        """After a sync of `relay_id` committed: agent -> bytes still wanted (0: none)."""
        for agent_id, nbytes in unmet.items():
            relays = self._by_agent.get(agent_id, {})
            relays.pop(relay_id, None)
            if nbytes > 0:
                relays[relay_id] = nbytes
            if relays:
                self._by_agent[agent_id] = relays
            else:
                self._by_agent.pop(agent_id, None)
        while len(self._by_agent) > self.limit:
            del self._by_agent[next(iter(self._by_agent))]

    def of(self, agent_id: str) -> dict[str, int]:
        """Relays waiting for `agent_id`: relay -> bytes wanted."""
        return dict(self._by_agent.get(agent_id, {}))
