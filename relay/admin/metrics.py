"""The relay's Prometheus metrics, read from the hub's own counters at scrape time.

Invariants:
- Nothing here runs on the byte path: `collect` reads figures the relay keeps
  anyway (stream byte counts, buckets, the quota agent's counters), only when
  Prometheus scrapes.
- Byte counters are exact: `quotarelay_relay_bytes_total` summed over
  directions equals the payload bytes the streams of an agent carried.
- Agent labels are capped (`metrics.max_agents`, the rest in `other`); tunnel
  labels appear only with `metrics.per_tunnel`.
- A figure the relay does not keep yet is left out, not reported as 0: each
  entry of `EXTRAS` is one line, read with `getattr` and skipped when absent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from quota.agent.sync import QuotaAgent
from quota.core.stream import PauseReason, StreamState
from quota.metrics import LabelCap, MetricsConfig
from relay.hub.hub import Hub
from relay.udp.relay import udp_of

P = "quotarelay_relay_"


@dataclass(frozen=True, slots=True, kw_only=True)
class Extra:
    """A figure read from the hub when the attribute path exists: `hub.<path>`."""

    name: str
    doc: str
    path: str
    counter: bool = False  # a counter gets `_total` appended; else a gauge


# A new counter on the hub or one of its parts is exposed by one line here.
EXTRAS: tuple[Extra, ...] = (
    Extra(
        name="preauth_connections",
        doc="SSH connections not authenticated yet",
        path="preauth.connections",
    ),
    Extra(
        name="preauth_drops",
        doc="SSH connections dropped before authentication",
        path="preauth.drops",
        counter=True,
    ),
)


def _lookup(root: object, path: str) -> int | None:
    value: Any = root
    for part in path.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class RelayCollector(Collector):
    def __init__(self, hub: Hub, quota: QuotaAgent | None, config: MetricsConfig) -> None:
        self.hub = hub
        self.quota = quota
        self.config = config
        self.agents = LabelCap(config.max_agents)
        self.outbox_depth = 0  # refreshed before each scrape (an await on the journal)

    async def refresh(self) -> None:
        if self.quota is not None:
            self.outbox_depth = await self.quota.journal.pending_count()

    def collect(self) -> Iterator[Any]:
        for part in (self._bytes, self._streams, self._buckets, self._refusals, self._extra):
            yield from part()
        if self.quota is not None:
            yield from self._sync(self.quota)

    def _bytes(self) -> Iterator[Any]:
        by_dir = self.hub.live.bytes_by_direction()
        family = CounterMetricFamily(
            P + "bytes",
            "payload bytes relayed per client agent and direction",
            labels=["agent", "direction"],
        )
        per_agent = self.agents.sum_by(((a, d), n) for (a, _t, d), n in by_dir.items())
        for (agent, direction), total in sorted(per_agent.items()):
            family.add_metric([agent, direction], total)
        yield family
        if self.config.per_tunnel:
            tunnels = CounterMetricFamily(
                P + "tunnel_bytes",
                "payload bytes relayed per tunnel and direction",
                labels=["agent", "tunnel", "direction"],
            )
            for (agent, tunnel, direction), total in sorted(by_dir.items()):
                tunnels.add_metric([agent, tunnel, direction], total)
            yield tunnels

    def _streams(self) -> Iterator[Any]:
        states = Counter(s.state for s in self.hub.live.values())
        streams = GaugeMetricFamily(P + "streams", "live streams by state", labels=["state"])
        for state in StreamState:
            if state is not StreamState.CLOSED:
                streams.add_metric([state.value], states[state])
        yield streams
        yield GaugeMetricFamily(P + "tunnels", "registered tunnels", value=len(self.hub.tunnels))
        yield GaugeMetricFamily(
            P + "ssh_connections", "logged-in agent connections", value=len(self.hub.connections)
        )
        pauses = CounterMetricFamily(P + "pauses", "stream pauses by reason", labels=["reason"])
        for reason in PauseReason:
            pauses.add_metric([reason.value], self.hub.pauses[reason])
        yield pauses

    def _buckets(self) -> Iterator[Any]:
        figures: dict[str, Callable[[Any], int]] = {
            "granted": lambda b: b.granted,
            "used": lambda b: b.used,
            "remaining": lambda b: b.remaining,
        }
        for name, read in figures.items():
            family = GaugeMetricFamily(
                f"{P}bucket_{name}_bytes", f"bytes {name} in each agent's bucket", labels=["agent"]
            )
            values = self.agents.sum_by(((a,), read(b)) for a, b in self.hub.buckets.items())
            for (agent,), value in sorted(values.items()):
                family.add_metric([agent], value)
            yield family

    def _refusals(self) -> Iterator[Any]:
        family = CounterMetricFamily(
            P + "refusals", "refused requests by kind and cause", labels=["kind", "cause"]
        )
        for cause, count in sorted(self.hub.refusals.items()):
            family.add_metric(["ssh", cause], count)
        udp = udp_of(self.hub)
        for cause, count in sorted(udp.refusals.counts.items() if udp else ()):
            family.add_metric(["udp", cause], count)
        yield family

    def _extra(self) -> Iterator[Any]:
        for extra in EXTRAS:
            value = _lookup(self.hub, extra.path)
            if value is not None:
                kind = CounterMetricFamily if extra.counter else GaugeMetricFamily
                yield kind(P + extra.name, extra.doc, value=value)

    def _sync(self, quota: QuotaAgent) -> Iterator[Any]:
        times = quota.round_times
        buckets, running = [], 0
        for bound, count in zip((*times.bounds_ms, None), times.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound is None else str(bound / 1000), running))
        yield HistogramMetricFamily(
            P + "sync_round_seconds",
            "duration of sync rounds with the billing API",
            buckets=buckets,
            sum_value=times.total_ms / 1000,
        )
        events = CounterMetricFamily(
            P + "sync_events", "the quota agent's counters by event", labels=["event"]
        )
        for event, count in sorted(quota.counters.items()):
            events.add_metric([event], count)
        yield events
        yield GaugeMetricFamily(
            P + "billing_online", "1 if the last sync succeeded", value=int(quota.online)
        )
        yield GaugeMetricFamily(
            P + "outbox_reports", "reports waiting to be sent", value=self.outbox_depth
        )


def _fixed(pid: int) -> Callable[[], int]:
    return lambda: pid


class ProcessesCollector(Collector):
    """The `process_*` figures of a relay of workers: summed over the supervisor and workers.

    Memory, CPU seconds and open descriptors add up; `process_max_fds` and
    `process_start_time_seconds` are the supervisor's (each process has its own
    limit, checked by the relay against each). A worker that exits between
    listing and reading is left out of that scrape.
    """

    SUMMED = frozenset(
        {
            "process_cpu_seconds",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
        }
    )

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids = pids

    def collect(self) -> Iterator[Metric]:
        own = {m.name: m for m in ProcessCollector(registry=None).collect()}
        for pid in self.pids():
            try:
                theirs = ProcessCollector(pid=_fixed(pid), registry=None).collect()
            except OSError:
                continue
            for metric in theirs:
                mine = own.get(metric.name)
                if mine is None or metric.name not in self.SUMMED:
                    continue
                mine.samples = [
                    a._replace(value=a.value + b.value)
                    for a, b in zip(mine.samples, metric.samples, strict=False)
                ]
        yield from own.values()


def relay_registry(
    collector: RelayCollector, workers: Callable[[], list[int]] | None = None
) -> CollectorRegistry:
    """A private registry with the relay's figures and its processes' (open fds, memory, cpu).

    `workers`: the pids of a relay's workers, whose figures are added to this process's.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    if workers is None:
        ProcessCollector(registry=registry)
    else:
        registry.register(ProcessesCollector(workers))
    return registry
