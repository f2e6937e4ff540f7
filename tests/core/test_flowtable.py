"""UDP flow table: bounded, never locked to new peers, fair per source; unanswered flows summed."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from quota.core.errors import InvalidValue
from quota.core.flowtable import (
    EndReason,
    FlowEnd,
    FlowTable,
    FlowTableConfig,
    Touched,
    UnansweredRow,
    UnansweredSummary,
)

Peer = tuple[str, int]


def test_a_spoofed_flood_never_locks_out_a_new_peer() -> None:
    """4,100 one-byte flows from distinct sources: the table stays at 4,096 and a peer gets in."""
    table: FlowTable[Peer] = FlowTable()
    for i in range(4100):
        host = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
        table.touch((host, 40000), source=host, now=i, nbytes=1)
    assert len(table) == 4096
    got = table.touch(("192.0.2.1", 53), source="192.0.2.1", now=5000, nbytes=40)
    assert got.opened and got.evicted is not None
    assert got.evicted.reason is EndReason.EVICTED_FULL and got.evicted.opened_at == 4
    assert ("192.0.2.1", 53) in table and len(table) == 4096


def test_one_source_holds_at_most_64_flows_and_pushes_out_only_its_own() -> None:
    """Flows from distinct ports of one host stay at 64; other hosts' flows are untouched."""
    table: FlowTable[Peer] = FlowTable()
    table.touch(("192.0.2.9", 1), source="192.0.2.9", now=0)
    evicted = []
    for port in range(5000):
        got = table.touch(("198.51.100.7", port), source="198.51.100.7", now=1 + port, nbytes=1)
        if got.evicted is not None:
            evicted.append(got.evicted)
    assert table.of_source("198.51.100.7") == 64 and len(table) == 65
    assert {e.source for e in evicted} == {"198.51.100.7"}
    assert {e.reason for e in evicted} == {EndReason.EVICTED_SOURCE}
    assert [e.peer[1] for e in evicted[:3]] == [0, 1, 2]  # oldest first


def test_a_busy_flow_outlives_idle_ones() -> None:
    """A flow touched recently is not the one a full table evicts."""
    table: FlowTable[Peer] = FlowTable(FlowTableConfig(max_flows=3, per_source=3))
    for i, host in enumerate(["a", "b", "c"]):
        table.touch((host, 1), source=host, now=i)
    table.touch(("a", 1), source="a", now=10)
    got = table.touch(("d", 1), source="d", now=11)
    assert got.evicted is not None and got.evicted.peer == ("b", 1)
    assert table.oldest() == ("c", 1)


def test_idle_flows_expire_idlest_first() -> None:
    """expire ends the flows idle for the timeout, in order, and keeps the others."""
    table: FlowTable[Peer] = FlowTable()
    table.touch(("a", 1), source="a", now=0)
    table.touch(("b", 1), source="b", now=500)
    table.touch(("c", 1), source="c", now=900)
    ended = table.expire(now=1_500, idle_ms=1_000)
    assert [(e.peer, e.reason) for e in ended] == [
        (("a", 1), EndReason.IDLE),
        (("b", 1), EndReason.IDLE),
    ]
    assert len(table) == 1 and table.of_source("a") == 0


def test_answer_marks_a_flow_once_and_counts_both_ways() -> None:
    """The first answer says 'log this flow'; bytes each way are kept for its row."""
    table: FlowTable[Peer] = FlowTable()
    assert table.touch(("a", 1), source="a", now=0, nbytes=10) == Touched(opened=True)
    assert table.touch(("a", 1), source="a", now=1, nbytes=5) == Touched(opened=False)
    assert table.answer(("a", 1), now=2, nbytes=7) is True
    assert table.answer(("a", 1), now=3, nbytes=7) is False
    end = table.remove(("a", 1))
    assert (end.bytes_in, end.bytes_out, end.answered, end.reason) == (
        15,
        14,
        True,
        EndReason.CLOSED,
    )


def test_caller_mistakes_are_refused() -> None:
    """Unknown flows, time going back and impossible sizes raise InvalidValue."""
    table: FlowTable[Peer] = FlowTable()
    with pytest.raises(InvalidValue, match="no such flow"):
        table.remove(("a", 1))
    with pytest.raises(InvalidValue, match="no such flow"):
        table.answer(("a", 1), now=0, nbytes=1)
    table.touch(("a", 1), source="a", now=5)
    with pytest.raises(InvalidValue, match="time went back"):
        table.touch(("a", 1), source="a", now=4)
    with pytest.raises(InvalidValue, match="per_source"):
        FlowTableConfig(max_flows=10, per_source=11)


def test_unanswered_flows_make_one_row_per_tunnel_per_interval() -> None:
    """4,100 evicted one-datagram flows give one summary row, not 4,100 stream rows."""
    table: FlowTable[Peer] = FlowTable()
    summary = UnansweredSummary(interval_ms=60_000)
    for i in range(8200):
        got = table.touch((f"h{i}", 1), source=f"h{i}", now=i, nbytes=1)
        if got.evicted is not None:
            summary.add("t1", got.evicted, now=i)
    assert summary.flush(now=59_999) == []
    assert summary.flush(now=60_000 + 4096) == [
        UnansweredRow(tunnel="t1", since=4096, until=64_096, flows=4104, bytes_in=4104)
    ]
    assert summary.drain(now=70_000) == []


def test_summary_refuses_answered_flows_and_drains_one_tunnel() -> None:
    """An answered flow is logged alone; a tunnel that ends takes its pending row."""
    summary = UnansweredSummary()
    answered = FlowEnd(
        peer=1, source="s", reason=EndReason.IDLE, opened_at=0, last_at=0, bytes_in=1, bytes_out=1
    )
    with pytest.raises(InvalidValue, match="log it alone"):
        summary.add("t1", answered, now=0)
    silent = FlowEnd(
        peer=2, source="s", reason=EndReason.IDLE, opened_at=0, last_at=0, bytes_in=3, bytes_out=0
    )
    summary.add("t1", silent, now=0)
    summary.add("t2", silent, now=0)
    assert [r.tunnel for r in summary.drain(now=5, tunnel="t2")] == ["t2"]
    assert [r.tunnel for r in summary.drain(now=5)] == ["t1"]


def test_summary_sums_dropped_bytes_apart_from_passed_ones() -> None:
    """Dropped bytes of unanswered flows are summed beside the passed ones; never negative."""
    summary = UnansweredSummary(interval_ms=10)
    silent = FlowEnd(
        peer=2, source="s", reason=EndReason.IDLE, opened_at=0, last_at=0, bytes_in=3, bytes_out=0
    )
    summary.add("t1", silent, now=0, dropped=5)
    summary.add("t1", silent, now=1)
    with pytest.raises(InvalidValue, match="dropped"):
        summary.add("t1", silent, now=1, dropped=-1)
    assert len(summary) == 1
    assert summary.flush(now=10) == [
        UnansweredRow(tunnel="t1", since=0, until=10, flows=2, bytes_in=6, bytes_dropped=5)
    ]
    assert len(summary) == 0


HOSTS = ["a", "b", "c", "d"]
CONFIG = FlowTableConfig(max_flows=6, per_source=3)


class FlowTableMachine(RuleBasedStateMachine):
    """Random datagrams, answers, idle sweeps and removals against a plain activity list."""

    def __init__(self) -> None:
        super().__init__()
        self.table: FlowTable[Peer] = FlowTable(CONFIG)
        self.now = 0
        self.model: list[tuple[Peer, str]] = []  # least recently active first
        self.last: dict[Peer, int] = {}

    def _bump(self, peer: Peer, source: str) -> None:
        self.model = [m for m in self.model if m[0] != peer] + [(peer, source)]
        self.last[peer] = self.now

    @rule(host=st.sampled_from(HOSTS), port=st.integers(1, 5), step=st.integers(0, 3))
    def datagram(self, host: str, port: int, step: int) -> None:
        self.now += step
        peer = (host, port)
        got = self.table.touch(peer, source=host, now=self.now, nbytes=1)
        assert got.opened == (peer not in self.last)
        if got.evicted is not None:
            mine = [m for m in self.model if m[1] == host]
            if got.evicted.reason is EndReason.EVICTED_SOURCE:
                assert len(mine) == CONFIG.per_source and got.evicted.peer == mine[0][0]
            else:
                assert len(self.model) == CONFIG.max_flows
                assert got.evicted.peer == self.model[0][0]
            self.model.remove((got.evicted.peer, got.evicted.source))
            del self.last[got.evicted.peer]
        else:
            assert got.opened is False or len(self.model) < CONFIG.max_flows
        self._bump(peer, host)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def answer(self, data: st.DataObject) -> None:
        peer, source = data.draw(st.sampled_from(self.model))
        self.table.answer(peer, now=self.now, nbytes=1)
        self._bump(peer, source)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        peer, source = data.draw(st.sampled_from(self.model))
        assert self.table.remove(peer).peer == peer
        self.model.remove((peer, source))
        del self.last[peer]

    @rule(step=st.integers(0, 10), idle=st.integers(1, 10))
    def sweep(self, step: int, idle: int) -> None:
        self.now += step
        ended = [e.peer for e in self.table.expire(now=self.now, idle_ms=idle)]
        expected = [p for p, _ in self.model if self.now - self.last[p] >= idle]
        assert ended == expected
        self.model = [m for m in self.model if m[0] not in ended]
        for peer in ended:
            del self.last[peer]

    @invariant()
    def bounded_and_in_activity_order(self) -> None:
        assert len(self.table) == len(self.model) <= CONFIG.max_flows
        for host in HOSTS:
            assert self.table.of_source(host) == sum(s == host for _, s in self.model)
            assert self.table.of_source(host) <= CONFIG.per_source
        assert self.table.oldest() == (self.model[0][0] if self.model else None)


TestFlowTableMachine = FlowTableMachine.TestCase
TestFlowTableMachine.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
