"""Before login: silent floods, one flooding address, wrong keys, login grace (sshd's anchors)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.rigs.flood import Flood, Gauge, elapsed, log_events, moves_data
from tests.rigs.keys import AgentSpec
from tests.rigs.procs import free_port
from tests.rigs.relay import Relay
from tests.rigs.services import DigestService, pattern
from tests.rigs.ssh import Ssh, expose, local_forward
from tests.rigs.waits import poll

MiB = 1024 * 1024
RSS_GROWTH_KIB = 64 * 1024  # silent peers cost kilobytes each; this is far above


async def start_relay(tmp: Path, agents: dict[str, AgentSpec], **limits: Any) -> Relay:
    relay = Relay(tmp, list(agents.values()), extra={"limits": limits} if limits else {})
    await relay.start()
    await relay.call("grant", "nas-agent", 1 << 40)
    return relay


async def connections(relay: Relay) -> dict[str, Any]:
    status = await relay.call("status")
    return dict(status["connections"])


async def refused(relay: Relay, reason: str) -> int:
    return int((await connections(relay))["refused"].get(reason, 0))


async def tech_logs_in_and_moves_data(
    relay: Relay, agents: dict[str, AgentSpec], service: DigestService, clients: list[Ssh]
) -> float:
    """The support agent logs in (-L to nas:22) and moves data byte-exact; its login time."""
    port = free_port()
    start = time.monotonic()
    await local_forward(relay, agents["tech"], port, "nas:22", clients)
    login_s = elapsed(start)
    await moves_data(port, service, pattern(MiB, 7))
    return login_s


def accounted(relay: Relay, event: str, source: str) -> int:
    """Events the log accounts for: a line with a `reason` is one, each adds its suppressed."""
    lines = [x for x in log_events(relay.tmp / "relay.log", event) if x["source"] == source]
    return sum(("reason" in x or "username" in x) + int(str(x["suppressed"])) for x in lines)


async def test_one_address_gets_ten_silent_connections_and_is_logged_once(
    tmp_path: Path, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """1,100 silent connections from one address: 10 held, 1,090 dropped, one log line a minute."""
    relay = await start_relay(tmp_path, agents)
    try:
        async with DigestService(send=pattern(MiB, 8)) as service:
            await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{service.port}", clients)
            gauge = Gauge(relay.pid)
            before = gauge.read()
            with Flood() as flood:
                flood.open(relay.ssh_port, 1100)
                await poll(
                    lambda: _refused_at_least(relay, "per_source_startups", 1090),
                    "1,090 drops",
                    timeout=60,
                )
                held = await connections(relay)
                assert held["unauthenticated"] == 10
                await poll(lambda: flood.still_open() == 10, "the relay to close the rest")
                login_s = await tech_logs_in_and_moves_data(relay, agents, service, clients)
                after = gauge.read()
            print(f"login under a one-address flood: {login_s} s; {before} -> {after}")
            assert login_s < 5  # the bound is 1 s; this is a loaded test machine
            assert after.fds - before.fds < 40
            assert after.rss_kib - before.rss_kib < RSS_GROWTH_KIB
            assert len(log_events(relay.tmp / "relay.log", "connection_dropped")) == 1
    finally:
        await relay.stop()
    assert (
        accounted(relay, "connection_dropped", "127.0.0.2/32") == 1090
    )  # the last line, at stop, has the rest


async def _settled(relay: Relay, n: int) -> bool:
    """`n` flood connections are each held before login or refused."""
    held = await connections(relay)
    return bool(int(held["unauthenticated"]) + sum(held["refused"].values()) >= n)


async def _refused_at_least(relay: Relay, reason: str, n: int) -> bool:
    return await refused(relay, reason) >= n


async def test_many_addresses_fill_startups_but_a_tunnel_holders_address_still_logs_in(
    tmp_path: Path, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """30 addresses x 20 silent connections: at most 100 start-ups; the agent's address gets in."""
    relay = await start_relay(tmp_path, agents)
    try:
        async with DigestService(send=pattern(MiB, 9)) as service:
            await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{service.port}", clients)
            with Flood() as flood:
                flood.open(relay.ssh_port, 600, sources=30)
                await poll(lambda: _settled(relay, 600), "600 held or dropped", timeout=60)
                held = await connections(relay)
                assert 10 <= held["unauthenticated"] <= 100
                assert await refused(relay, "max_startups") > 0
                login_s = await tech_logs_in_and_moves_data(relay, agents, service, clients)
            print(f"login with start-ups full: {login_s} s, {held}")
            assert login_s < 5
    finally:
        await relay.stop()


async def test_the_sixth_wrong_key_ends_the_connection_and_the_right_one_is_not_tried(
    tmp_path: Path, agents: dict[str, AgentSpec]
) -> None:
    """300 wrong keys then the right one on one connection: cut at 6; a new connection logs in."""
    relay = await start_relay(tmp_path, agents)
    wrong = [asyncssh.generate_private_key("ssh-ed25519") for _ in range(300)]
    right = asyncssh.read_private_key(str(agents["tech"].key_path))
    options: dict[str, Any] = {"username": "tech", "known_hosts": None, "agent_path": None}
    try:
        with pytest.raises(asyncssh.DisconnectError, match="Too many authentication failures"):
            async with asyncssh.connect(
                "127.0.0.1", relay.ssh_port, client_keys=[*wrong, right], **options
            ):
                pass
        await poll(lambda: _refused_at_least(relay, "max_auth_tries", 1), "the disconnection")
        assert (await connections(relay))["auth_failures"] == 6
        async with asyncssh.connect("127.0.0.1", relay.ssh_port, client_keys=[right], **options):
            pass
        assert (await connections(relay))["unauthenticated"] == 0
    finally:
        await relay.stop()
    lines = log_events(relay.tmp / "relay.log", "auth_refused")
    assert accounted(relay, "auth_refused", "127.0.0.1/32") == 6
    assert len(lines) == 2  # the first key at once, the other five when the relay stopped
    disconnected = log_events(relay.tmp / "relay.log", "login_disconnected")
    assert [x["reason"] for x in disconnected] == ["max_auth_tries"]


async def test_login_grace_ends_silent_connections(
    tmp_path: Path, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """Connections still silent after `login_grace` are closed; the descriptors come back."""
    relay = await start_relay(tmp_path, agents, login_grace="2s")
    try:
        gauge = Gauge(relay.pid)
        before = gauge.read()
        with Flood() as flood:
            flood.open(relay.ssh_port, 8, sources=4)
            await poll(lambda: _unauthenticated(relay, 8), "8 silent connections held")
            started = time.monotonic()
            await poll(lambda: flood.still_open() == 0, "the grace to end them", timeout=20)
            waited = elapsed(started)
            assert await refused(relay, "login_grace") == 8
            assert (await connections(relay))["total"] == 0
        await poll(lambda: gauge.read().fds <= before.fds, "the descriptors to be released")
        assert waited > 0.5  # they were held, not dropped: the grace ran out first
        async with DigestService(send=pattern(MiB, 10)) as service:
            await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{service.port}", clients)
            await tech_logs_in_and_moves_data(relay, agents, service, clients)
    finally:
        await relay.stop()
    lines = log_events(relay.tmp / "relay.log", "login_disconnected")
    assert [x.get("reason") for x in lines if "reason" in x] == ["login_grace"] * 4  # per source
    sources = {str(x["source"]) for x in lines}
    assert sum(accounted(relay, "login_disconnected", source) for source in sources) == 8


async def _unauthenticated(relay: Relay, n: int) -> bool:
    return bool((await connections(relay))["unauthenticated"] == n)


async def test_a_rejected_key_logs_its_source_and_user(
    tmp_path: Path, agents: dict[str, AgentSpec]
) -> None:
    """A key the registry does not know leaves one throttled `auth_refused` line."""
    relay = await start_relay(tmp_path, agents)
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    try:
        with pytest.raises(asyncssh.PermissionDenied):
            async with asyncssh.connect(
                "127.0.0.1",
                relay.ssh_port,
                username="nas-agent",
                client_keys=[stranger],
                known_hosts=None,
                agent_path=None,
            ):
                pass
    finally:
        await relay.stop()
    (line,) = log_events(relay.tmp / "relay.log", "auth_refused")
    assert (line["source"], line["username"], line["suppressed"]) == (
        "127.0.0.1/32",
        "nas-agent",
        0,
    )
