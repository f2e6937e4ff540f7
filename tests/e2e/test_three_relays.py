"""Leases follow traffic: three relay processes on one billing API, real ssh agents (issue 10)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from relay.streamlog.query import totals
from tests.e2e.test_sync import free_port
from tests.rigs.billing import Billing, synced_relay
from tests.rigs.keys import AgentSpec
from tests.rigs.relay import TOKEN, Relay
from tests.rigs.services import DigestService, pattern, sha
from tests.rigs.ssh import Ssh, expose, local_forward
from tests.rigs.sync_proxy import SyncProxy
from tests.rigs.waits import poll

PLAN = 100_000  # the client agent's plan: 100 KB, no metered traffic
INTERVAL_S = 1.0  # every relay's sync interval
WANT = 50_000  # what must arrive through the relay the agent uses, within two intervals


class Cast:
    """Two accounts: acme (client `a`, support `s`) and globex (client `b`, support `t`)."""

    def __init__(self, a: AgentSpec, s: AgentSpec, b: AgentSpec, t: AgentSpec, acme: str) -> None:
        self.a, self.s, self.b, self.t, self.acme = a, s, b, t, acme


@pytest.fixture
async def billing(tmp_path: Path) -> AsyncIterator[Billing]:
    (tmp_path / "billing").mkdir()
    b = Billing(tmp_path / "billing", plan_traffic=PLAN)
    await b.start()
    yield b
    await b.close()


async def _cast(tmp_path: Path, billing: Billing) -> Cast:
    acme = await billing.account("acme", 10_000)
    globex = await billing.account("globex", 10_000)
    a = await billing.agent(tmp_path, acme, "a", "client")
    s = await billing.agent(tmp_path, acme, "s", "support")
    b = await billing.agent(tmp_path, globex, "b", "client")
    t = await billing.agent(tmp_path, globex, "t", "support")
    for client in (a, b):
        await billing.api("POST", f"/v1/agents/{client.agent_id}/subscription", {"plan": "small"})
    return Cast(a, s, b, t, acme)


@dataclass
class Three:
    """Three relays, each reporting to the billing API through a counting proxy."""

    relays: list[Relay] = field(default_factory=list)
    proxies: list[SyncProxy] = field(default_factory=list)

    def asked(self, n: int) -> set[str]:
        """The agents relay `n` (1-3) ever asked a lease for (want > 0)."""
        bodies = [body for _, body in self.proxies[n - 1].syncs]
        return {a["agent_id"] for body in bodies for a in body["leases"] if a["want"] > 0}


@pytest.fixture
async def three(
    tmp_path: Path, billing: Billing, request: pytest.FixtureRequest
) -> AsyncIterator[Three]:
    """r1 (`idle_return = "5s"`, as in the issue), r2 and r3: `relay-<n>` of the billing API.

    Each runs the workers an indirect parameter asks for (1 without one).
    """
    workers = getattr(request, "param", 1)
    fleet = Three()
    try:
        for n in (1, 2, 3):
            folder = tmp_path / f"r{n}"
            folder.mkdir()
            proxy = await SyncProxy(billing.url).__aenter__()
            fleet.proxies.append(proxy)
            keys: dict[str, Any] = {"interval": "1s", "min_want": "1M", "url": proxy.url}
            if n == 1:
                keys["idle_return"] = "5s"
            relay = synced_relay(folder, billing, relay=n, **keys)
            relay.extra["relay"]["workers"] = workers
            fleet.relays.append(relay)
            await relay.start()
        yield fleet
    finally:
        for relay in fleet.relays:
            await relay.stop()
        for proxy in fleet.proxies:
            await proxy.__aexit__(None, None, None)


async def _knows(relay: Relay, *agents: AgentSpec) -> None:
    async def known() -> bool:
        listed = {a["agent_id"] for a in await relay.call("agents")}
        return all(a.agent_id in listed for a in agents)

    await poll(known, "the relay to learn the agents from the billing API")


async def _view(relay: Relay) -> dict[str, dict[str, Any]]:
    return {a["agent_id"]: a for a in await relay.call("agents")}


class Route:
    """An endpoint of client `a` on one relay, reached by support `s` through the same relay."""

    def __init__(self, relay: Relay, service: DigestService, ssh: list[Ssh]) -> None:
        self.relay, self.service, self.ssh = relay, service, ssh
        self.port = 0

    async def open(self, cast: Cast, clients: list[Ssh]) -> Route:
        target = f"nas:22:127.0.0.1:{self.service.port}"
        self.ssh.append(await expose(self.relay, cast.a, target, clients))
        self.port = free_port()
        self.ssh.append(await local_forward(self.relay, cast.s, self.port, "nas:22", clients))
        return self

    async def close(self) -> None:
        """The agent leaves this relay: its ssh clients stop, its tunnel goes."""
        for ssh in self.ssh:
            await ssh.stop()


async def _send(path: Route, payload: bytes, within: float) -> float:
    """Write `payload` into the tunnel; it must arrive whole within `within` seconds."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", path.port)
    before = len(path.service.conns)
    t0 = time.monotonic()
    writer.write(payload)
    await writer.drain()

    def arrived() -> bool:
        conns = path.service.conns[before:]
        return bool(conns) and conns[0].received == len(payload)

    await poll(arrived, f"{len(payload)} bytes through {path.relay.tmp.name}", within)
    took = time.monotonic() - t0
    conn = path.service.conns[before]
    assert conn.digest.hexdigest() == sha(payload)
    writer.write_eof()
    await asyncio.wait_for(conn.eof.wait(), 10)
    writer.close()
    await writer.wait_closed()
    return took


async def test_an_admin_read_on_one_relay_takes_no_lease_from_the_relay_the_agent_uses(
    tmp_path: Path, billing: Billing, three: Three, clients: list[Ssh]
) -> None:
    """`relay agents` on r1, which A never used, leaves r1 holding nothing; A's bytes flow on r2."""
    cast = await _cast(tmp_path, billing)
    relays = three.relays
    r1, r2, r3 = relays
    for relay in relays:
        await _knows(relay, cast.a, cast.s, cast.b, cast.t)
    got = await asyncio.create_subprocess_exec(
        *_cli_agents(r1), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await got.communicate()
    assert got.returncode == 0 and cast.a.agent_id in out.decode(), err.decode()
    # B (globex) holds a tunnel on r3 and T logs in there: r3 serves B only.
    async with DigestService(half_close=False) as other:
        await expose(r3, cast.b, f"web:80:127.0.0.1:{other.port}", clients)
        await asyncio.sleep(3 * INTERVAL_S)  # the time r1 had to take A's plan is under test
        async with DigestService(half_close=False) as service:
            path = await Route(r2, service, []).open(cast, clients)
            await _send(path, pattern(WANT, 1), within=2 * INTERVAL_S)
    views = [await _view(r) for r in relays]
    assert all(v["granted"] == 0 for v in views[0].values())  # r1 took nothing
    assert {a for a, v in views[2].items() if v["granted"]} <= {cast.b.agent_id}
    assert views[1][cast.a.agent_id]["used"] == WANT
    assert all(v["granted"] == 0 for a, v in views[1].items() if a != cast.a.agent_id)
    # a lease is asked for a tunnel's owner that can pay (its tunnel primes it) or a waiting
    # stream: none on r1 (read only), on r3 only for B (its tunnel), none for a support
    # agent; on r2 only for A
    asked = (three.asked(1), three.asked(2), three.asked(3))
    assert asked == (set(), {cast.a.agent_id}, {cast.b.agent_id})


@pytest.mark.parametrize("three", [1, 2], indirect=True, ids=["workers1", "workers2"])
async def test_an_agent_that_moves_finds_its_bytes_on_each_new_relay(
    tmp_path: Path, billing: Billing, three: Three, clients: list[Ssh]
) -> None:
    """A sends 10 KB through r1, moves to r2 (50 KB), then to r3 (30 KB); billed = logged."""
    cast = await _cast(tmp_path, billing)
    relays = three.relays
    r1 = relays[0]
    for relay in relays:
        await _knows(relay, cast.a, cast.s)
    sizes = [10_000, WANT, 30_000]
    async with DigestService(half_close=False) as service:
        for n, (relay, size) in enumerate(zip(relays, sizes, strict=True)):
            path = await Route(relay, service, []).open(cast, clients)
            within = 30.0 if relay is r1 else 2 * INTERVAL_S  # r1: the first lease, no race
            took = await _send(path, pattern(size, n + 2), within)
            print(f"{relay.tmp.name}: {size} bytes in {took:.3f} s")
            await path.close()
    total = sum(sizes)

    async def billed() -> bool:
        return await billing.usage_total(cast.acme, cast.a.agent_id) == total

    await poll(billed, "billing to count every byte", 30)

    async def logged() -> bool:  # a stream's closing record may follow its EOF
        rows = [row for relay in relays for row in await totals(relay.db_path, by="agent")]
        return sum(row["bytes_total"] for row in rows) == total

    await poll(logged, "the stream logs of the three relays to agree with billing")


def _cli_agents(relay: Relay) -> list[str]:
    """`quotarelay relay agents` against `relay`'s admin API, as an operator runs it."""
    return [
        sys.executable,
        "-m",
        "tools.cli",
        "relay",
        "agents",
        "--admin",
        f"http://127.0.0.1:{relay.admin_port}",
        "--token",
        TOKEN,
    ]
