"""SSH-side fair shares: connections per agent, channels per connection, per-agent overrides."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.rigs.flood import Gauge, moves_data
from tests.rigs.keys import AgentSpec, make_agent
from tests.rigs.procs import free_port
from tests.rigs.relay import Relay
from tests.rigs.services import DigestService, pattern
from tests.rigs.ssh import Ssh, expose, local_forward
from tests.rigs.waits import poll

MiB = 1024 * 1024
RSS_GROWTH_KIB = 64 * 1024


@pytest.fixture
def agents(tmp_path: Path) -> dict[str, AgentSpec]:
    web = make_agent(tmp_path, "web-agent", "acme", "client")
    web.limits = {"ssh_connections_per_agent": 3}
    narrow = make_agent(tmp_path, "narrow-tech", "acme", "support")
    narrow.limits = {"channels_per_connection": 4}
    return {
        "nas": make_agent(tmp_path, "nas-agent", "acme", "client"),
        "tech": make_agent(tmp_path, "tech", "acme", "support"),
        "web": web,
        "narrow": narrow,
    }


@pytest.fixture
async def relay(tmp_path: Path, agents: dict[str, AgentSpec]) -> AsyncIterator[Relay]:
    r = Relay(tmp_path, list(agents.values()))
    await r.start()
    await r.call("grant", "nas-agent", 1 << 40)
    yield r
    await r.stop()


class Watched(asyncssh.SSHClient):
    """An asyncssh client that keeps why its connection ended."""

    def __init__(self) -> None:
        self.ended: Exception | None = None
        self.lost = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended, self.lost = exc, True


async def log_in(relay: Relay, agent: AgentSpec) -> tuple[Any, Watched]:
    conn, client = await asyncssh.create_connection(
        Watched,
        "127.0.0.1",
        relay.ssh_port,
        username=agent.agent_id,
        client_keys=[str(agent.key_path)],
        known_hosts=None,
        agent_path=None,
    )
    return conn, client


def refused_events(relay: Relay) -> list[tuple[str, str, str]]:
    """(agent, target, cause) of every `refused` stream-log event, once the relay stopped."""
    with sqlite3.connect(relay.db_path) as db:
        rows = db.execute(
            "SELECT agent_id, target, close_reason FROM stream_events WHERE event = 'refused'"
        ).fetchall()
    return [(str(a), str(t), str(c)) for a, t, c in rows]


async def attempts(
    relay: Relay, agent: AgentSpec, n: int, keep: int
) -> tuple[list[Any], list[str]]:
    """`n` logins one after another, `keep` expected to stay: those kept, the others' reasons."""
    tried: list[tuple[Any, Watched]] = []
    reasons: list[str] = []
    for _ in range(n):
        try:
            tried.append(await log_in(relay, agent))
        except asyncssh.DisconnectError as exc:
            reasons.append(exc.reason)
    await poll(lambda: sum(not c.lost for _, c in tried) <= keep, "the relay to end the rest")
    reasons += [str(getattr(c.ended, "reason", c.ended)) for _, c in tried if c.lost]
    return [conn for conn, c in tried if not c.lost], reasons


async def test_one_agent_holds_at_most_16_ssh_connections(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """300 logins of one agent: 16 held (its tunnel's too), the rest told why; others work."""
    async with DigestService(send=pattern(MiB, 21)) as service:
        await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{service.port}", clients)
        gauge = Gauge(relay.pid)
        before = gauge.read()
        kept, reasons = await attempts(relay, agents["nas"], 300, keep=15)
        assert len(kept) == 15
        assert len(reasons) == 285
        message = "too many SSH connections of agent nas-agent: 16 at most"
        assert all(message in r for r in reasons), reasons[:3]
        port = free_port()
        await local_forward(relay, agents["tech"], port, "nas:22", clients)
        await moves_data(port, service, pattern(MiB, 22))
        after = gauge.read()
        print(f"300 logins of one agent: {before} -> {after}")
        assert after.fds - before.fds < 40
        assert after.rss_kib - before.rss_kib < RSS_GROWTH_KIB
        held = (await relay.call("status"))["connections"]["total"]
        kept.pop().close()  # one given back: one more may come
        await poll(lambda: _total(relay, held - 1), "the closed connection to be released")
        conn, _client = await log_in(relay, agents["nas"])
        kept.append(conn)
        for conn in kept:
            conn.close()
    await relay.stop()
    causes = refused_events(relay)
    assert causes == [("nas-agent", "login", "too_many_ssh_connections")] * 285


async def _total(relay: Relay, n: int) -> bool:
    return bool((await relay.call("status"))["connections"]["total"] == n)


async def test_an_agents_registry_entry_overrides_its_connection_share(
    relay: Relay, agents: dict[str, AgentSpec]
) -> None:
    """web-agent's entry says 3 connections: the 4th is refused though the default is 16."""
    kept, reasons = await attempts(relay, agents["web"], 6, keep=3)
    assert (len(kept), len(reasons)) == (3, 3)
    assert all("of agent web-agent: 3 at most (ssh_connections_per_agent)" in r for r in reasons)
    for conn in kept:
        conn.close()


async def open_channels(conn: Any, n: int) -> tuple[list[Any], list[str]]:
    """Ask for `n` channels to nas:22 one after another: those opened, the refusal texts."""
    opened: list[Any] = []
    refusals: list[str] = []
    for _ in range(n):
        try:
            opening = conn.create_connection(asyncssh.SSHTCPSession, "nas", 22)
            chan, _session = await asyncio.wait_for(opening, 10)
            opened.append(chan)
        except asyncssh.ChannelOpenError as exc:
            refusals.append(exc.reason)
    return opened, refusals


async def test_one_connection_opens_at_most_64_channels(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """2,000 channels asked on one connection: 64 open (64 at the service), the rest told why."""
    async with (
        DigestService(half_close=False) as idle,
        DigestService(send=pattern(MiB, 23)) as service,
    ):
        await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{idle.port}", clients)
        await expose(relay, agents["nas"], f"files:22:127.0.0.1:{service.port}", clients)
        gauge = Gauge(relay.pid)
        before = gauge.read()
        conn, _client = await log_in(relay, agents["tech"])
        opened, refusals = await open_channels(conn, 2000)
        assert (len(opened), len(refusals)) == (64, 1936)
        text = (
            "quotarelay: too many channels on this connection: 64 at most (channels_per_connection)"
        )
        assert set(refusals) == {text}
        await poll(lambda: len(idle.conns) == 64, "64 connections at the service")
        port = free_port()
        await local_forward(relay, agents["tech"], port, "files:22", clients)
        await moves_data(port, service, pattern(MiB, 24))  # another connection is not held back
        after = gauge.read()
        print(f"2,000 channels on one connection: {before} -> {after}")
        assert after.fds - before.fds < 40
        assert after.rss_kib - before.rss_kib < RSS_GROWTH_KIB
        opened.pop().close()  # one given back: one more opens
        again: list[str] = []  # refusals while the close is on its way
        await poll(lambda: _channel_opens(conn, again), "a channel to open again", timeout=10)
        conn.close()
    await relay.stop()
    expected = 1936 + len(again)
    assert refused_events(relay).count(("tech", "open nas:22", "too_many_channels")) == expected


async def _channel_opens(conn: Any, refusals: list[str]) -> bool:
    opened, refused = await open_channels(conn, 1)
    refusals += refused
    return bool(opened)


async def test_an_agents_registry_entry_overrides_its_channel_share(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """narrow-tech's entry says 4 channels a connection: the 5th is refused."""
    async with DigestService(half_close=False) as service:
        await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{service.port}", clients)
        conn, _client = await log_in(relay, agents["narrow"])
        opened, refusals = await open_channels(conn, 6)
        assert (len(opened), len(refusals)) == (4, 2)
        assert all("4 at most (channels_per_connection)" in r for r in refusals)
        conn.close()
