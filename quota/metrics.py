"""Prometheus settings shared by the relay and the billing API, and bounded labels.

The listener is `quota.metrics_server` (aiohttp and prometheus_client): a
relay's worker reads these settings and never imports it.

Invariants:
- Per-agent labels are bounded: the first `limit` agents seen keep their own
  label for the life of the process; every later one is summed into `other`,
  so a counter stays monotonic under either label.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from quota.contract.config import Address, Problems, decode_value

OTHER = "other"


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    """Where `/metrics` listens (`port` None: off) and how many labels it may make."""

    host: str = "127.0.0.1"
    port: int | None = None
    max_agents: int = 100
    per_tunnel: bool = False


def metrics_config(
    listen: str, problems: Problems, *, max_agents: int = 100, per_tunnel: bool = False
) -> MetricsConfig:
    """A `[metrics]` section as a value: `listen` "" is off, else HOST:PORT (a bad one is noted)."""
    address = decode_value(Address, listen, "metrics.listen", problems) if listen else None
    if address is None or address is msgspec.UNSET:
        return MetricsConfig(max_agents=max_agents, per_tunnel=per_tunnel)
    return MetricsConfig(
        host=address.host, port=address.port, max_agents=max_agents, per_tunnel=per_tunnel
    )


class LabelCap:
    """Hands out at most `limit` distinct label values; the rest become `other`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._kept: set[str] = set()

    def label(self, value: str) -> str:
        if value in self._kept:
            return value
        if len(self._kept) < self.limit:
            self._kept.add(value)
            return value
        return OTHER

    def sum_by(self, values: Iterable[tuple[tuple[str, ...], int]]) -> dict[tuple[str, ...], int]:
        """Totals keyed by labels whose first element (the agent) is capped."""
        totals: Counter[tuple[str, ...]] = Counter()
        for labels, value in values:
            totals[(self.label(labels[0]), *labels[1:])] += value
        return dict(totals)
