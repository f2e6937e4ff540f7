"""The supervisor's quota host: one relay's leases shared out to its workers, and its one view.

Invariants:
- Every byte a worker may pass was handed to it from this relay's lease by
  `quota.core.sublease.SubLeases` (one per agent), so the bytes passed by all
  workers together never exceed what billing (or an operator) granted.
- It implements `quota.agent.sync.QuotaHost` for the quota agent (usage and
  tunnel time add up every worker's cumulative reports, dead incarnations
  included) and `relay.admin.server.RelayControl` for the admin API: the relay
  is seen as one.
- Stream-log records of every worker are written here, by the one writer; the
  streams a worker had open when it died are closed with reason `worker_lost`,
  with the last figures they were logged with. With billing, the figures
  behind each worker's report are kept for the journal (relay.workers.figures).
- A worker is known by its incarnation (a number never reused), so a restarted
  worker starts with no sub-lease and its predecessor's leftovers stay written off.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import structlog

from quota.contract import wire
from quota.core.money import MAX_COUNTER
from quota.core.relay_sync import Holding
from quota.core.sublease import Served, SubLeases
from relay.config import RelayConfig
from relay.errors import UnknownAgent, UnknownStream
from relay.hub.billing import to_agent
from relay.hub.gate import Gate
from relay.registry import Agent, Registry
from relay.streamlog.record import StreamRecord
from relay.streamlog.writer import StreamLog
from relay.workers.figures import RelayBook
from relay.workers.link import Link
from relay.workers.messages import (
    Agents,
    Flush,
    GiveBack,
    Grant,
    LeaseAnswered,
    LeaseRound,
    Message,
    PauseStream,
    Ready,
    Recall,
    Records,
    ReleaseShare,
    SetActive,
    SetLowWater,
    TakeShare,
    Usage,
    Want,
)
from relay.workers.rounds import RoundDesk
from relay.workers.shares import ShareDesk

log = structlog.get_logger("relay.workers")

WORKER_LOST = "worker_lost"
FRESH_WAIT_S = 1.0


class WorkerHost:
    """Sub-leases, usage and live streams of every worker; the quota host and admin control."""

    def __init__(self, config: RelayConfig, registry: Registry, streamlog: StreamLog) -> None:
        self.config = config
        self.registry = registry
        self.streamlog = streamlog
        self.links: dict[int, Link] = {}  # incarnation -> its link
        self.ready: dict[int, Ready] = {}  # incarnation -> its slot and pid
        self.leases: dict[str, SubLeases] = {}
        self.reports: dict[int, Usage] = {}
        # incarnation -> its live streams as its last Flush answer showed them (a report on
        # its own cadence, which may come between that answer and the read, carries none)
        self.views: dict[int, list[dict[str, Any]]] = {}
        self.dead_bytes: Counter[tuple[str, str]] = Counter()
        self.dead_ms: Counter[tuple[str, str]] = Counter()
        self.dead_directions: Counter[tuple[str, str, str]] = Counter()
        self.dead_pauses: Counter[str] = Counter()
        self.dead_refused: Counter[str] = Counter()
        self.live: dict[str, tuple[int, StreamRecord]] = {}  # stream id -> (worker, last record)
        self.inactive: set[str] = {a.agent_id for a in registry if not a.active}
        self.dropping: set[str] = set()  # leases expired: bytes given back are dropped
        self.revoking: dict[str, int] = {}  # agent -> bytes an operator revoked, still held
        self.remote_agents: list[wire.RelayAgent] | None = None
        self.quota_counters: dict[str, int] = {}
        self.gate: Gate | None = None  # the relay's gate before login (relay.workers.door)
        self.desk = ShareDesk(config.shares, registry)  # per-agent fair shares, relay-wide
        self.rounds = RoundDesk(self.links)  # sync rounds a new tunnel waits for
        self.exhausted: set[str] = set()  # billing gave them less than asked: they cannot pay
        self.on_want: Callable[[str], None] | None = None  # the quota agent's nudge
        # with billing: the figures behind the reports' usage, journaled with each report
        self.book = RelayBook(streamlog, _now_ms) if config.billing is not None else None
        self._seq = 0
        self._answered: dict[int, int] = {}  # incarnation -> the last Flush it answered
        self._fresh = asyncio.Event()
        self.started_ms = _now_ms()

    # -- workers come and go ------------------------------------------------------------

    def joined(self, key: int, link: Link, ready: Ready) -> None:
        self.links[key] = link
        self.ready[key] = ready
        if self.remote_agents is not None:
            link.send(Agents(agents=self.remote_agents))
        for agent_id in self.inactive:
            link.send(SetActive(agent_id=agent_id, active=False))

    def lost(self, key: int) -> int:
        """A worker is gone: close its logged streams, write off its sub-leases."""
        self.links.pop(key, None)
        self.ready.pop(key, None)
        self.views.pop(key, None)
        last = self.reports.pop(key, None)
        if last is not None:
            self.dead_bytes.update({(a, t): n for a, t, n in last.tunnel_bytes})
            self.dead_ms.update({(a, t): n for a, t, n in last.tunnel_ms})
            self.dead_directions.update({(a, t, d): n for a, t, d, n in last.directions})
            self.dead_pauses.update(last.pauses)
            self.dead_refused.update(last.ssh_refused)
        now = _now_ms()
        closed = 0
        for stream_id, (worker, rec) in list(self.live.items()):
            if worker != key:
                continue
            del self.live[stream_id]
            self.streamlog.record(
                dataclasses.replace(
                    rec, event="close", at_ms=now, state="closed", close_reason=WORKER_LOST
                )
            )
            closed += 1
        for agent_id, leases in self.leases.items():
            self._send(agent_id, leases.worker_lost(key))
        self.desk.lost(key)
        return closed

    # -- what workers say -----------------------------------------------------------------

    def handle(self, key: int, message: Message) -> None:
        if isinstance(message, Records):
            for rec in message.records:
                self.streamlog.record(rec)
                if rec.state == "closed":
                    self.live.pop(rec.stream_id, None)
                else:
                    self.live[rec.stream_id] = (key, rec)
        elif isinstance(message, Usage):
            self.reports[key] = message
            if message.seq:  # answering a Flush: its live streams, kept till the next answer
                self.views[key] = message.live
            if self.book is not None:
                self.book.reported(message.run, message.figures)
            if message.seq:
                self._answered[key] = message.seq
                self._fresh.set()
            for agent_id, used in message.used_total.items():
                self._leases(agent_id).report(key, used)
        elif isinstance(message, Want):
            leases = self._leases(message.agent_id)
            short = leases.short
            self._send(message.agent_id, leases.want(key, message.nbytes, need=message.need))
            if leases.short and not leases.pool:
                self._recall_idle(key, message.agent_id, leases)
            if leases.short > short and self.on_want is not None:
                self.on_want(message.agent_id)  # the relay's own lease runs low: ask billing
        elif isinstance(message, LeaseRound):
            self.rounds.ask(key, message.req)
        elif isinstance(message, TakeShare):
            link = self.links.get(key)
            answer = self.desk.take(key, message)
            if link is not None:
                link.send(answer)
        elif isinstance(message, ReleaseShare):
            self.desk.release(key, message)
        elif isinstance(message, GiveBack):
            leases = self._leases(message.agent_id)
            leases.report(key, message.used_total)
            agent_id = message.agent_id
            owed = self.revoking.pop(agent_id, 0)
            revoke = MAX_COUNTER if agent_id in self.dropping else owed
            before = leases.revoked
            served = leases.give_back(key, message.nbytes, revoke=revoke)
            if owed > leases.revoked - before:
                self.revoking[agent_id] = owed - (leases.revoked - before)
            self._send(agent_id, served)
            if message.nbytes and not self.holds_tunnels(agent_id) and self.on_want is not None:
                self.on_want(agent_id)  # the agent left the relay: its lease goes back now

    def _recall_idle(self, asker: int, agent_id: str, leases: SubLeases) -> None:
        """Bytes held by workers where the agent has no tunnel (it moved) go back to the pool.

        So an agent that reconnects to another worker finds its bytes there before
        its first datagram, which cannot wait for a recall.
        """
        for key, report in self.reports.items():
            if key != asker and agent_id not in report.holding and leases.outstanding(key):
                link = self.links.get(key)
                if link is not None:
                    link.send(Recall(agent_id=agent_id))

    def _leases(self, agent_id: str) -> SubLeases:
        leases = self.leases.get(agent_id)
        if leases is None:
            leases = self.leases[agent_id] = SubLeases(agent_id)
        return leases

    def _send(self, agent_id: str, served: Served) -> None:
        for grant in served.grants:
            link = self.links.get(grant.worker)
            if link is not None:
                link.send(Grant(agent_id=grant.agent_id, nbytes=grant.nbytes))
        for key in served.recalls:
            link = self.links.get(key)
            if link is not None:
                link.send(Recall(agent_id=agent_id))

    async def refresh(self) -> None:
        """Ask every worker for its records and a report now; wait for them (FRESH_WAIT_S at most).

        Run before each admin request and each scrape, so they see what the
        workers did up to the moment they were asked.
        """
        self._seq += 1
        seq, keys = self._seq, list(self.links)
        for key in keys:
            self.links[key].send(Flush(seq=seq))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FRESH_WAIT_S
        while any(self._answered.get(k, 0) < seq for k in keys if k in self.links):
            self._fresh.clear()
            left = deadline - loop.time()
            if left <= 0:
                return  # a stuck worker does not hold up the admin API
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._fresh.wait(), left)

    def recall(self, agent_id: str) -> None:
        for link in self.links.values():
            link.send(Recall(agent_id=agent_id))

    def broadcast(self, message: Message) -> None:
        for link in self.links.values():
            link.send(message)

    # -- QuotaHost (quota.agent.sync) -------------------------------------------------------

    def usage(self) -> dict[tuple[str, str], int]:
        totals = Counter(self.dead_bytes)
        for report in self.reports.values():
            totals.update({(a, t): n for a, t, n in report.tunnel_bytes})
        return dict(totals)

    def tunnel_time(self) -> dict[tuple[str, str], int]:
        totals = Counter(self.dead_ms)
        for report in self.reports.values():
            totals.update({(a, t): n for a, t, n in report.tunnel_ms})
        return dict(totals)

    def holdings(self) -> dict[str, Holding]:
        """Each agent's bucket over the whole relay: what it holds, lacks, carries."""
        served = {a for r in self.reports.values() for a in r.holding}
        streams = Counter(rec.agent_id for _, rec in self.live.values())
        return {
            agent_id: Holding(
                remaining=leases.added - leases.revoked - leases.used - leases.lost,
                # what streams wait for, as one process's bucket says (headroom is the workers')
                short=0 if agent_id in self.inactive else leases.need,
                streams=streams[agent_id],
                tunnels=agent_id in served,
                can_pay=agent_id not in self.inactive and agent_id not in self.exhausted,
            )
            for agent_id, leases in self.leases.items()
        }

    def take_back(self, agent_id: str, nbytes: int) -> int:
        """Up to `nbytes` of what no worker holds; the workers are recalled for the next round."""
        leases = self.leases.get(agent_id)
        if leases is None:
            return 0
        back = leases.revoke(nbytes)
        if back < nbytes and leases.outstanding_all:
            self.recall(agent_id)
        return back

    def set_low_water(self, agent_id: str, nbytes: int) -> None:
        """The relay's low-water mark of an agent, shared out among the workers."""
        share = -(-nbytes // max(1, len(self.links)))
        self.broadcast(SetLowWater(agent_id=agent_id, nbytes=share))

    def add_lease(self, agent_id: str, nbytes: int) -> None:
        if nbytes > 0 and self.registry.get(agent_id) is not None:
            self.dropping.discard(agent_id)
            self._send(agent_id, self._leases(agent_id).add(nbytes))
            log.info("granted", agent_id=agent_id, bytes=nbytes)

    def set_status(self, agent_id: str, active: bool) -> None:
        if (agent_id in self.inactive) == active:  # a change
            self.inactive.discard(agent_id) if active else self.inactive.add(agent_id)
            self.broadcast(SetActive(agent_id=agent_id, active=active))

    def drop_lease(self, agent_id: str) -> int:
        leases = self.leases.get(agent_id)
        if leases is None:
            return 0
        self.dropping.add(agent_id)
        self.recall(agent_id)
        return leases.revoke(leases.pool)

    def set_agents(self, agents: list[wire.RelayAgent]) -> None:
        self.remote_agents = list(agents)
        self.registry.replace([to_agent(a) for a in agents])
        self.inactive = {a.id for a in agents if a.status != "active"}
        self.broadcast(Agents(agents=self.remote_agents))

    # -- RelayControl (relay.admin.server) ------------------------------------------------

    def _agent(self, agent_id: str) -> Agent:
        agent = self.registry.get(agent_id)
        if agent is None:
            raise UnknownAgent(agent_id)
        return agent

    def _view(self, agent: Agent) -> dict[str, object]:
        leases = self._leases(agent.agent_id)
        granted = leases.added - leases.revoked
        waiting = leases.short > 0
        state = "inactive" if agent.agent_id in self.inactive else "active"
        if state == "active" and (waiting or granted - leases.used - leases.lost <= 0):
            state = "depleted"
        return {
            "agent_id": agent.agent_id,
            "account": agent.account,
            "role": agent.role.value,
            "state": agent.role.shown_state(state),
            "granted": granted,
            "used": leases.used,
            "remaining": granted - leases.used - leases.lost,
            "streams": sum(1 for _, r in self.live.values() if r.agent_id == agent.agent_id),
            "waiting": int(waiting),
        }

    def grant(self, agent_id: str, nbytes: int) -> dict[str, object]:
        agent = self._agent(agent_id)
        self.add_lease(agent_id, nbytes)
        return self._view(agent)

    def revoke(self, agent_id: str, nbytes: int) -> dict[str, object]:
        """Take back from the pool at once; what workers hold comes back on a recall."""
        agent = self._agent(agent_id)
        leases = self._leases(agent_id)
        back = leases.revoke(nbytes)
        if back < nbytes and leases.outstanding_all:
            self.revoking[agent_id] = self.revoking.get(agent_id, 0) + nbytes - back
            self.recall(agent_id)  # the rest comes out of what the workers give back
        log.info("revoked", agent_id=agent_id, bytes=back)
        return self._view(agent)

    def set_active(self, agent_id: str, active: bool) -> dict[str, object]:
        agent = self._agent(agent_id)
        self.set_status(agent_id, active)
        return self._view(agent)

    def agents(self) -> list[dict[str, object]]:
        return [self._view(agent) for agent in self.registry]

    def streams(self) -> list[dict[str, object]]:
        """Every worker's live streams, as its last fresh report shows them, with its slot."""
        views: list[dict[str, object]] = []
        for key, live in self.views.items():
            ready = self.ready.get(key)
            for view in live:
                views.append({**view, "worker": None if ready is None else ready.worker})
        return views

    def pause_stream(self, stream_id: str, paused: bool) -> dict[str, object]:
        """Ask the stream's worker to pause it (reason OPERATOR) or lift that pause.

        The answer is the stream as last reported; the next read shows the change.
        """
        for key, live in self.views.items():
            for view in live:
                if view.get("stream_id") == stream_id and key in self.links:
                    self.links[key].send(PauseStream(stream_id=stream_id, paused=paused))
                    log.info("stream_operator_pause", stream_id=stream_id, paused=paused)
                    return dict(view)
        raise UnknownStream(stream_id)

    def lease_answered(self, agent_id: str, exhausted: bool) -> None:
        self.exhausted.add(agent_id) if exhausted else self.exhausted.discard(agent_id)
        self.broadcast(LeaseAnswered(agent_id=agent_id, exhausted=exhausted))

    def status(self) -> dict[str, object]:
        return {
            "relay_id": self.config.relay_id,
            "uptime_ms": _now_ms() - self.started_ms,
            "tunnels": sum(r.tunnels for r in self.reports.values()),
            "streams": len(self.live),
            "depleted": sum(1 for a in self.agents() if a["state"] == "depleted"),
            "sync": dict(self.quota_counters),
            "connections": self.connections(),
            "workers": self.workers(),
        }

    def worker_pids(self) -> list[int]:
        """The pid of each live worker."""
        return [ready.pid for ready in self.ready.values()]

    def workers(self) -> list[dict[str, object]]:
        """Each live worker: its slot, pid, tunnels and logged streams."""
        views: list[dict[str, object]] = []
        for key, ready in sorted(self.ready.items(), key=lambda kv: kv[1].worker):
            report = self.reports.get(key)
            views.append(
                {
                    "worker": ready.worker,
                    "pid": ready.pid,
                    "tunnels": 0 if report is None else report.tunnels,
                    "connections": 0 if report is None else report.connections.get("total", 0),
                    "streams": sum(1 for w, _ in self.live.values() if w == key),
                }
            )
        return views

    def connections(self) -> dict[str, object]:
        """Connections held by the workers; before login, the relay's gate (relay.workers.door)."""
        totals: Counter[str] = Counter()
        refused: Counter[str] = Counter()
        for report in self.reports.values():
            totals.update(report.connections)
            refused.update(report.refused)
        gate = self.gate
        if gate is not None:
            refused.update(gate.refusals)
            totals["auth_failures"] += gate.auth_failures
            totals["unauthenticated"] += gate.admission.unauthenticated
            totals["cap"] = gate.admission.config.ordinary_cap
            totals["descriptor_limit"] = gate.admission.config.descriptor_limit
        return {
            "total": totals["total"],
            "unauthenticated": totals["unauthenticated"],
            "cap": totals["cap"],
            "descriptor_limit": totals["descriptor_limit"],
            "auth_failures": totals["auth_failures"],
            "refused": dict(refused),
        }

    def holds_tunnels(self, agent_id: str) -> bool:
        return any(agent_id in r.holding for r in self.reports.values())


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
