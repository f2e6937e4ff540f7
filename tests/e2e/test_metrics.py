"""The relay's `/metrics` listener: exact byte counts, streams, buckets, bounded labels, health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.rigs.keys import AgentSpec
from tests.rigs.metrics import names, scrape, value
from tests.rigs.procs import free_port
from tests.rigs.relay import Relay
from tests.rigs.services import DigestService, exchange, pattern
from tests.rigs.ssh import Ssh, expose, local_forward
from tests.rigs.waits import poll

KiB = 1024


async def _metered_relay(
    tmp: Path, agents: dict[str, AgentSpec], **metrics: object
) -> AsyncIterator[Relay]:
    extra = {"metrics": {"listen": "127.0.0.1:0", **metrics}}
    relay = Relay(tmp, list(agents.values()), extra=extra)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


@pytest.fixture
async def relay(tmp_path: Path, agents: dict[str, AgentSpec]) -> AsyncIterator[Relay]:
    async for r in _metered_relay(tmp_path, agents):
        yield r


async def _through(relay: Relay, owner: AgentSpec, tech: AgentSpec, name: str, up: int,
                   down: int, clients: list[Ssh]) -> None:  # fmt: skip
    """Send `up` bytes to an endpoint of `owner` and get `down` back, through the relay."""
    async with DigestService(send=pattern(down, 3)) as service:
        await expose(relay, owner, f"{name}:22:127.0.0.1:{service.port}", clients)
        port = free_port()
        await local_forward(relay, tech, port, f"{name}:22", clients)
        _, got = await exchange(port, pattern(up, 4), down)
        assert got == down
        await poll(lambda: bool(service.conns) and service.conns[0].received == up, "upload")


async def test_bytes_per_agent_and_direction_are_exact(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """`quotarelay_relay_bytes_total` per agent and direction equals the payload relayed."""
    await relay.call("grant", "nas-agent", 10**9)
    up, down = 300 * KiB + 7, 700 * KiB + 11
    await _through(relay, agents["nas"], agents["tech"], "nas", up, down, clients)
    port = relay.ready["metrics"]
    samples = await scrape(port)
    total = "quotarelay_relay_bytes_total"
    assert value(samples, total, agent="nas-agent", direction="up") == up
    assert value(samples, total, agent="nas-agent", direction="down") == down
    used = value(samples, "quotarelay_relay_bucket_used_bytes", agent="nas-agent")
    assert used == up + down
    assert value(samples, "quotarelay_relay_bucket_granted_bytes", agent="nas-agent") == 10**9
    assert value(samples, "quotarelay_relay_streams", state="open") == 0  # it closed
    assert value(samples, "quotarelay_relay_tunnels") == 1
    assert (value(samples, "process_open_fds") or 0) > 0
    assert not any(n.startswith("quotarelay_relay_tunnel_bytes") for n in names(samples))


async def test_pauses_and_refusals_are_counted(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """A stream paused for quota and a refused tunnel request show in their counters."""
    await relay.call("grant", "nas-agent", 64 * KiB)
    async with DigestService(send=pattern(256 * KiB, 5)) as service:
        await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{service.port}", clients)
        port = free_port()
        await local_forward(relay, agents["tech"], port, "nas:22", clients)
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await poll(lambda: _paused(relay), "the stream paused for quota")
            samples = await scrape(relay.ready["metrics"])
            assert (value(samples, "quotarelay_relay_pauses_total", reason="quota") or 0) >= 1
            assert value(samples, "quotarelay_relay_streams", state="paused") == 1
        finally:
            writer.close()
    refused = Ssh(relay, agents["tech"], "-N", "-R", "nas2:22:127.0.0.1:9", "relay")
    clients.append(refused)
    await refused.start("-v", "-o", "ExitOnForwardFailure=yes")
    await refused.finish()
    samples = await scrape(relay.ready["metrics"])
    assert value(samples, "quotarelay_relay_refusals_total", kind="ssh", cause="tunnel_request")


async def _paused(relay: Relay) -> bool:
    streams = await relay.call("streams")
    return [s["state"] for s in streams] == ["paused"]


async def test_agent_labels_are_capped_and_tunnels_labelled_on_request(
    tmp_path: Path, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """With max_agents = 1 a second agent is summed into `other`; per_tunnel adds tunnel labels."""
    async for relay in _metered_relay(tmp_path, agents, max_agents=1, per_tunnel=True):
        for agent in ("nas-agent", "web-agent"):
            await relay.call("grant", agent, 10**9)
        await _through(relay, agents["nas"], agents["tech"], "nas", 1000, 2000, clients)
        await _through(relay, agents["web"], agents["tech"], "web", 3000, 4000, clients)
        samples = await scrape(relay.ready["metrics"])
        labelled = {dict(labels)["agent"] for name, labels in samples
                    if name == "quotarelay_relay_bytes_total"}  # fmt: skip
        assert len(labelled) == 2 and "other" in labelled
        tunnel = "acme/web-agent/tcp_endpoint/web:22"
        tunnel_up = value(samples, "quotarelay_relay_tunnel_bytes_total",
                          agent="web-agent", tunnel=tunnel, direction="up")  # fmt: skip
        assert tunnel_up == 3000


async def test_health_answers_without_a_token(relay: Relay) -> None:
    """`/healthz` and `/readyz` answer without the admin token; other endpoints still need it."""
    base = f"http://127.0.0.1:{relay.admin_port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get(base + "/healthz") as resp:
            assert (resp.status, await resp.json()) == (200, {"status": "alive"})
        async with session.get(base + "/readyz") as resp:
            body = await resp.json()
            assert (resp.status, body["status"], body["reasons"]) == (200, "ready", [])
        async with session.get(base + "/v1/status") as resp:
            assert resp.status == 401


async def test_metrics_are_off_by_default(tmp_path: Path, agents: dict[str, AgentSpec]) -> None:
    """Without a [metrics] listen address the relay opens no metrics port."""
    relay = Relay(tmp_path, list(agents.values()))
    await relay.start()
    try:
        assert relay.ready["metrics"] is None
    finally:
        await relay.stop()
