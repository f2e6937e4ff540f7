"""Fair shares: how much of the relay one agent, connection, tunnel or source may hold.

Invariants:
- Each count is of one `Share` in one scope (an agent, an SSH connection, a
  tunnel, a source address on a public port or UDP tunnel). `acquire` raises it
  by one only while it is below the limit in force for the agent concerned;
  otherwise it answers `Refused`, whose `cause` is a stable snake_case value
  for the `refused` record and whose `message` is what the peer is told.
- Acquire and release balance exactly: a count is never negative, and a release
  of what was not acquired is an error (InvalidValue) that changes nothing.
  A scope whose count returns to zero is forgotten, so memory follows use.
- Limits are config defaults (`ShareLimits`), overridable per agent; lowering
  an agent's limit refuses new acquisitions until its count falls below it,
  and never takes back what is held.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from quota.core.errors import InvalidValue


class Share(enum.Enum):
    """What is counted; the value is the config key of its limit."""

    SSH_CONNECTIONS_PER_AGENT = "ssh_connections_per_agent"
    CHANNELS_PER_CONNECTION = "channels_per_connection"
    PUBLIC_PORTS_PER_AGENT = "public_ports_per_agent"
    ENDPOINTS_PER_AGENT = "endpoints_per_agent"
    STREAMS_PER_TUNNEL = "streams_per_tunnel"
    CONNECTIONS_PER_SOURCE = "connections_per_source"  # on one public TCP port
    UDP_FLOWS_PER_SOURCE = "udp_flows_per_source"  # live flows of one source, one tunnel

    @property
    def per_agent(self) -> bool:
        """Counted per agent (the scope is the agent id itself)."""
        return self in _PER_AGENT


_PER_AGENT = frozenset(
    {Share.SSH_CONNECTIONS_PER_AGENT, Share.PUBLIC_PORTS_PER_AGENT, Share.ENDPOINTS_PER_AGENT}
)


class Cause(enum.Enum):
    """Why something was refused: the `cause` of a `refused` record."""

    TOO_MANY_SSH_CONNECTIONS = "too_many_ssh_connections"
    TOO_MANY_CHANNELS = "too_many_channels"
    TOO_MANY_PUBLIC_PORTS = "too_many_public_ports"
    TOO_MANY_ENDPOINTS = "too_many_endpoints"
    TOO_MANY_STREAMS = "too_many_streams"
    TOO_MANY_CONNECTIONS_FROM_SOURCE = "too_many_connections_from_source"
    TOO_MANY_UDP_FLOWS_FROM_SOURCE = "too_many_udp_flows_from_source"


_CAUSES: dict[Share, tuple[Cause, str]] = {
    Share.SSH_CONNECTIONS_PER_AGENT: (Cause.TOO_MANY_SSH_CONNECTIONS, "SSH connections of agent"),
    Share.CHANNELS_PER_CONNECTION: (Cause.TOO_MANY_CHANNELS, "channels on this connection"),
    Share.PUBLIC_PORTS_PER_AGENT: (Cause.TOO_MANY_PUBLIC_PORTS, "public ports of agent"),
    Share.ENDPOINTS_PER_AGENT: (Cause.TOO_MANY_ENDPOINTS, "endpoints of agent"),
    Share.STREAMS_PER_TUNNEL: (Cause.TOO_MANY_STREAMS, "live streams of this tunnel"),
    Share.CONNECTIONS_PER_SOURCE: (
        Cause.TOO_MANY_CONNECTIONS_FROM_SOURCE,
        "connections from this address to this port",
    ),
    Share.UDP_FLOWS_PER_SOURCE: (
        Cause.TOO_MANY_UDP_FLOWS_FROM_SOURCE,
        "UDP flows from this address",
    ),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ShareLimits:
    """The limit of each share; the field names are the config keys."""

    ssh_connections_per_agent: int = 16
    channels_per_connection: int = 64
    public_ports_per_agent: int = 8  # as frp's maxPortsPerClient
    endpoints_per_agent: int = 64
    streams_per_tunnel: int = 512
    connections_per_source: int = 64
    udp_flows_per_source: int = 64

    def __post_init__(self) -> None:
        for share in Share:
            value = getattr(self, share.value)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidValue(f"{share.value}: must be a whole number >= 0, not {value!r}")

    def limit(self, share: Share) -> int:
        limit: int = getattr(self, share.value)
        return limit

    def overridden(self, overrides: Mapping[str, Any]) -> ShareLimits:
        """These limits with some replaced (an agent's registry entry); unknown keys refused."""
        unknown = set(overrides) - {share.value for share in Share}
        if unknown:
            raise InvalidValue(f"unknown limits {sorted(unknown)}")
        return dataclasses.replace(self, **overrides)


@dataclass(frozen=True, slots=True, kw_only=True)
class Granted:
    """Taken: release it exactly once when it ends."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Refused:
    """Not taken: tell the peer `message`, write a `refused` record with `cause`."""

    cause: Cause
    share: Share
    limit: int
    message: str


class Shares:
    """Counts of every share in every scope, against per-agent limits."""

    def __init__(self, defaults: ShareLimits | None = None) -> None:
        self.defaults = defaults or ShareLimits()
        self._overrides: dict[str, ShareLimits] = {}
        self._counts: Counter[tuple[Share, Hashable]] = Counter()

    def set_limits(self, agent: str, limits: ShareLimits | None) -> None:
        """Give `agent` its own limits (None: back to the defaults)."""
        if limits is None:
            self._overrides.pop(agent, None)
        else:
            self._overrides[agent] = limits

    def limits_for(self, agent: str) -> ShareLimits:
        return self._overrides.get(agent, self.defaults)

    def count(self, share: Share, scope: Hashable) -> int:
        return self._counts[(share, scope)]

    def acquire(
        self, share: Share, *, agent: str, scope: Hashable | None = None
    ) -> Granted | Refused:
        """Take one of `share` in `scope`, under the limits of `agent` (whose it is)."""
        key = (share, self._scope(share, agent, scope))
        limit = self.limits_for(agent).limit(share)
        if self._counts[key] >= limit:
            cause, what = _CAUSES[share]
            shown = f" {agent}" if share.per_agent else ""
            return Refused(
                cause=cause,
                share=share,
                limit=limit,
                message=f"too many {what}{shown}: {limit} at most ({share.value})",
            )
        self._counts[key] += 1
        return Granted()

    def release(self, share: Share, *, agent: str, scope: Hashable | None = None) -> None:
        """Give back one of `share` in `scope`; releasing what is not held is an error."""
        key = (share, self._scope(share, agent, scope))
        held = self._counts.get(key, 0)
        if held <= 0:
            raise InvalidValue(f"release of {share.value} in {key[1]!r}: none is held")
        if held == 1:
            del self._counts[key]
        else:
            self._counts[key] = held - 1

    def __len__(self) -> int:
        """How many scopes hold something (memory follows use)."""
        return len(self._counts)

    @staticmethod
    def _scope(share: Share, agent: str, scope: Hashable | None) -> Hashable:
        if share.per_agent:
            if scope is not None and scope != agent:
                raise InvalidValue(f"{share.value} is counted per agent: no other scope")
            return agent
        if scope is None:
            raise InvalidValue(f"{share.value} needs a scope (a connection, tunnel or source)")
        return scope
