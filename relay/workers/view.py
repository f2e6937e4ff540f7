"""The relay's figures over all its workers, shaped as the metrics collector reads a hub.

Invariants:
- Counters (bytes by direction, pauses, refusals) add every worker's last
  report to what workers that are gone reported last, so they never go back.
- Gauges (streams by state, tunnels, connections, buckets) are the live
  workers' last reports and the supervisor's own stream table and sub-leases.
- Figures are as fresh as the workers' reports (every USAGE_EVERY_MS).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from quota.core.stream import PauseReason, StreamState
from relay.workers.host import WorkerHost


@dataclass(frozen=True, slots=True)
class _StreamView:
    state: StreamState


@dataclass(frozen=True, slots=True)
class _BucketView:
    granted: int
    used: int
    remaining: int


class _Live:
    def __init__(self, host: WorkerHost) -> None:
        self.host = host

    def bytes_by_direction(self) -> dict[tuple[str, str, str], int]:
        totals = Counter(self.host.dead_directions)
        for report in self.host.reports.values():
            totals.update({(a, t, d): n for a, t, d, n in report.directions})
        return dict(totals)

    def values(self) -> Iterator[_StreamView]:
        for _, rec in self.host.live.values():
            yield _StreamView(StreamState(rec.state))


class _Buckets:
    def __init__(self, host: WorkerHost) -> None:
        self.host = host

    def items(self) -> Iterator[tuple[str, _BucketView]]:
        for agent_id, leases in self.host.leases.items():
            granted = leases.added - leases.revoked
            remaining = granted - leases.used - leases.lost
            yield agent_id, _BucketView(granted, leases.used, remaining)


class RelayView:
    """What relay.admin.metrics.RelayCollector reads of a hub, for a relay of workers."""

    def __init__(self, host: WorkerHost) -> None:
        self.host = host
        self.live = _Live(host)
        self.buckets = _Buckets(host)

    @property
    def tunnels(self) -> range:
        return range(sum(r.tunnels for r in self.host.reports.values()))

    @property
    def connections(self) -> range:
        return range(sum(r.logged_in for r in self.host.reports.values()))

    @property
    def pauses(self) -> Counter[PauseReason]:
        totals = Counter(self.host.dead_pauses)
        for report in self.host.reports.values():
            totals.update(report.pauses)
        return Counter({PauseReason(r): n for r, n in totals.items()})

    @property
    def refusals(self) -> Counter[str]:
        totals = Counter(self.host.dead_refused)
        for report in self.host.reports.values():
            totals.update(report.ssh_refused)
        return totals
