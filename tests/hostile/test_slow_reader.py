"""Peers that stop reading: the relay holds a bounded amount per stream direction, charges honestly.

A support agent opens one channel with a 2 GiB window and then stops reading its
socket, or a public-port client stops reading, while the owner's service writes
without end. The relay pauses the owner's side (pause reason "buffer") instead of
buffering what the peer does not take: its memory stays flat, what it charges stays
within a few MiB of what the peer read (kernel buffers included), the stream log
shows the pause, and another account's transfer through the same relay meanwhile
completes byte-exact (its speed is the bench's business, not this test's).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from quota.core.frames import Frame, FrameDecoder, encode
from relay.streamlog.query import list_streams
from relay.workers.reach import PAIR_KERNEL
from tests.rigs.flood import Gauge
from tests.rigs.keys import AgentSpec, make_agent
from tests.rigs.metrics import scrape, value
from tests.rigs.procs import free_port
from tests.rigs.relay import BIG_GRANT, Relay
from tests.rigs.services import DigestService, exchange, pattern, sha
from tests.rigs.ssh import Ssh, expose, local_forward
from tests.rigs.stall import StopReadingChannel
from tests.rigs.waits import poll

MiB = 1024 * 1024
WINDOW = 2**31  # the window the hostile support agent advertises: 2 GiB
READ_FIRST = MiB  # what a hostile peer reads before it stops
# Charged minus read, kernel socket buffers included: the relay's send buffer (up to
# tcp_wmem's 4 MiB) and the peer's receive buffer take most of it (4 to 9 MiB seen).
OVERCHARGE = 12 * MiB
# Of that, what the relay may hold in user space beyond its `relay.write_buffer`: a
# chunk read before the pause (at most 256 KiB) and a channel's own buffer (64 KiB).
# With the default 256 KiB, about 265 KB were seen in all.
ONE_CHUNK = 320 * 1024
WRITE_BUFFER = 256 * 1024
RSS_GROWTH = 16_000_000  # bytes the relay may grow by while a peer does not read
OTHER = 16 * MiB  # each way, for the other account's transfer
CHUNK = 64 * 1024
MAX_POUR = 4 * 1024 * MiB  # the pouring service stops after this much, read or not
POURS = 40  # a UDP owner's replies, in batches of 1000 datagrams of 1000 bytes


class Pour:
    """A TCP service on 127.0.0.1 that writes to each client until closed (at most `MAX_POUR`)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0
        self.sent = 0

    async def __aenter__(self) -> Pour:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        chunk = pattern(CHUNK, 7)
        try:
            for _ in range(MAX_POUR // CHUNK):
                writer.write(chunk)
                await writer.drain()
                self.sent += CHUNK
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


class FramedChannel(asyncssh.SSHTCPSession[bytes]):
    """A UDP tunnel's framed channel driven by hand: keeps the frames it gets, counts payload.

    With `stop_after`, it stops its connection reading once that much payload arrived.
    """

    def __init__(self, stop_after: int = 0) -> None:
        self.chan: Any = None
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []
        self.received = 0
        self.stop_after = stop_after
        self.stopped = asyncio.Event()

    def connection_made(self, chan: Any) -> None:
        self.chan = chan

    def data_received(self, data: bytes, datatype: Any) -> None:
        for event in self.decoder.feed(data):
            if isinstance(event, Frame):
                self.frames.append(event)
                self.received += len(event.payload)
        if self.stop_after and self.received >= self.stop_after and not self.stopped.is_set():
            self.chan.get_connection()._transport.pause_reading()
            self.stopped.set()


class StopReadingSocket(asyncio.Protocol):
    """A public-port client: counts what arrives, then stops reading its socket."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = 0
        self.stopped = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.received >= READ_FIRST and not self.stopped.is_set():
            assert self.transport is not None
            self.transport.pause_reading()
            self.stopped.set()


def tcp_queue(local_port: int, remote_port: int, column: int) -> int:
    """A loopback TCP socket's send (column 0) or receive (1) queue in bytes, from /proc/net/tcp."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        if (local, remote) == (local_port, remote_port):
            return int(fields[4].split(":")[column], 16)
    raise AssertionError(f"no TCP socket from port {local_port} to {remote_port}")


def in_kernel(relay_port: int, peer_port: int) -> int:
    """Bytes in the kernel between relay and peer: the relay's send and the peer's receive queue."""
    return tcp_queue(relay_port, peer_port, 0) + tcp_queue(peer_port, relay_port, 1)


def rss(pid: int) -> int:
    """Resident memory of process `pid` and its children (a relay's workers), in bytes."""
    return Gauge(pid).read().rss_kib * 1024


@pytest.fixture
def agents(tmp_path: Path) -> dict[str, AgentSpec]:
    return {
        "nas": make_agent(tmp_path, "nas-agent", "acme", "client"),
        "tech": make_agent(tmp_path, "tech", "acme", "support"),
        "files": make_agent(tmp_path, "files-agent", "globex", "client"),
        "globex_tech": make_agent(tmp_path, "globex-tech", "globex", "support"),
    }


@pytest.fixture
def write_buffer() -> int:
    """The relay's `relay.write_buffer` for a test: the default unless it is parametrized."""
    return WRITE_BUFFER


@pytest.fixture
def workers() -> int:
    """The relay's `relay.workers` for a test: the default unless it is parametrized."""
    return 1


@pytest.fixture
async def relay(
    tmp_path: Path, agents: dict[str, AgentSpec], write_buffer: int, workers: int
) -> AsyncIterator[Relay]:
    sections = {
        "relay": {"write_buffer": str(write_buffer), "workers": workers},
        "metrics": {"listen": "127.0.0.1:0"},
    }
    r = Relay(tmp_path, list(agents.values()), sections)
    await r.start()
    try:
        for agent in ("nas-agent", "files-agent"):
            await r.call("grant", agent, BIG_GRANT)
        yield r
    finally:
        await r.stop()


@pytest.fixture
async def pour() -> AsyncIterator[Pour]:
    async with Pour() as service:
        yield service


class OtherTenant:
    """Another account's endpoint and support forward: one byte-exact transfer through the relay."""

    def __init__(self, relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]) -> None:
        self.relay, self.agents, self.clients = relay, agents, clients
        self.down, self.up = pattern(OTHER, 21), pattern(OTHER, 22)
        self.service = DigestService(send=self.down)
        self.port = 0

    async def start(self) -> None:
        await self.service.__aenter__()
        spec = f"files:80:127.0.0.1:{self.service.port}"
        await expose(self.relay, self.agents["files"], spec, self.clients)
        self.port = free_port()
        tech = self.agents["globex_tech"]
        await local_forward(self.relay, tech, self.port, "files:80", self.clients)

    async def transfer(self) -> None:
        """OTHER bytes each way, both digests checked."""
        digest, got = await exchange(self.port, self.up, OTHER)
        assert (digest, got) == (sha(self.down), OTHER)
        conn = self.service.conns[-1]
        await asyncio.wait_for(conn.eof.wait(), 30)
        assert (conn.digest.hexdigest(), conn.received) == (sha(self.up), OTHER)

    async def stop(self) -> None:
        await self.service.__aexit__()


@pytest.fixture
async def other(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> AsyncIterator[OtherTenant]:
    tenant = OtherTenant(relay, agents, clients)
    try:
        await tenant.start()
        yield tenant
    finally:
        await tenant.stop()


async def agent_conn(relay: Relay, agent: AgentSpec) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1",
        relay.ssh_port,
        username=agent.agent_id,
        client_keys=[str(agent.key_path)],
        known_hosts=None,
        agent_path=None,
    )


async def paused_in_log(relay: Relay) -> None:
    """Wait until the stream log shows the owner's stream paused; metrics name the reason."""

    async def paused() -> bool:
        rows = await list_streams(relay.db_path, agent="nas-agent")
        return len(rows) == 1 and rows[0]["state"] == "paused" and rows[0]["pauses"] >= 1

    await poll(paused, "the stalled stream's pause in the stream log")
    [row] = await list_streams(relay.db_path, agent="nas-agent")
    assert row["pause_reason"] == "flow"
    waited = {k: row[f"paused_{k}_ms"] for k in ("quota", "lease_wait", "inactive", "operator")}
    assert row["paused_flow_ms"] > 0 and waited == dict.fromkeys(waited, 0), row
    samples = await scrape(relay.ready["metrics"])
    assert (value(samples, "quotarelay_relay_pauses_total", reason="buffer") or 0) >= 1


async def check_bounded(
    relay: Relay, received: int, kernel: int, rss_before: int, write_buffer: int, pair: int = 0
) -> None:
    """What the relay charged beyond what the peer read, and its memory growth, stay bounded.

    Of the bytes charged but not read, `kernel` are in the SSH connection's socket
    buffers and at most `pair` in a cross-worker socket pair's; the rest is what
    the relay holds in user space for this direction.
    """
    assert relay.proc is not None
    charged = (await relay.call("agent", "nas-agent"))["used"]
    grown = rss(relay.proc.pid) - rss_before
    held = charged - received - kernel
    assert 0 <= charged - received < OVERCHARGE, f"charged {charged}, the peer read {received}"
    bound = write_buffer + ONE_CHUNK + pair
    assert held < bound, f"{held} bytes charged, not read, not in the kernel"
    assert grown < RSS_GROWTH, f"the relay grew by {grown} bytes"


@pytest.mark.parametrize("write_buffer", [WRITE_BUFFER, 64 * 1024])
async def test_a_support_agent_that_stops_reading_holds_the_owner_back(
    write_buffer: int,
    relay: Relay,
    agents: dict[str, AgentSpec],
    clients: list[Ssh],
    pour: Pour,
    other: OtherTenant,
) -> None:
    """A stalled 2 GiB-window channel pauses the owner: memory and charges stay bounded."""
    await _stalled_support(write_buffer, 0, relay, agents, clients, pour, other)


async def _stalled_support(
    write_buffer: int,
    pair: int,
    relay: Relay,
    agents: dict[str, AgentSpec],
    clients: list[Ssh],
    pour: Pour,
    other: OtherTenant,
) -> None:
    assert relay.proc is not None
    await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{pour.port}", clients)
    rss_before = rss(relay.proc.pid)
    async with await agent_conn(relay, agents["tech"]) as conn:
        channel = StopReadingChannel(conn)
        await conn.create_connection(lambda: channel, "nas", 22, window=WINDOW)
        await asyncio.wait_for(channel.stopped.wait(), 30)
        await other.transfer()
        kernel = in_kernel(relay.ssh_port, conn.get_extra_info("sockname")[1])
        await check_bounded(relay, channel.received, kernel, rss_before, write_buffer, pair)
        await paused_in_log(relay)


@pytest.mark.parametrize("workers", [2])
async def test_a_support_agent_on_another_worker_that_stops_reading_holds_the_owner_back(
    workers: int,
    relay: Relay,
    agents: dict[str, AgentSpec],
    clients: list[Ssh],
    pour: Pour,
    other: OtherTenant,
) -> None:
    """Two workers, the stalled channel in one and its owner in the other: bounded all the same."""
    # connections go to the workers in turn: the other tenant's two, then nas-agent's to
    # worker 0 and tech's to worker 1, so the stalled stream crosses between them; its
    # socket pair holds at most twice its SO_SNDBUF (Linux doubles it) in the kernel
    await _stalled_support(WRITE_BUFFER, 2 * PAIR_KERNEL, relay, agents, clients, pour, other)


async def test_a_public_client_that_stops_reading_holds_the_owner_back(
    write_buffer: int,
    relay: Relay,
    agents: dict[str, AgentSpec],
    clients: list[Ssh],
    pour: Pour,
    other: OtherTenant,
) -> None:
    """A public-port client that stops reading pauses the owner: memory and charges stay bounded."""
    assert relay.proc is not None
    ssh = Ssh(relay, agents["nas"], "-N", "-R", f"0:127.0.0.1:{pour.port}", "relay")
    clients.append(ssh)
    await ssh.start("-v")
    line = await ssh.wait_for_line("Allocated port")
    port = int(line.split("Allocated port", 1)[1].split()[0])
    rss_before = rss(relay.proc.pid)
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_connection(StopReadingSocket, "127.0.0.1", port)
    try:
        await asyncio.wait_for(client.stopped.wait(), 30)
        await other.transfer()
        kernel = in_kernel(port, transport.get_extra_info("sockname")[1])
        await check_bounded(relay, client.received, kernel, rss_before, write_buffer)
        await paused_in_log(relay)
    finally:
        transport.close()


async def test_udp_replies_to_a_support_agent_that_stops_reading_are_dropped_not_buffered(
    relay: Relay, agents: dict[str, AgentSpec], other: OtherTenant
) -> None:
    """A stalled 2 GiB-window UDP channel: replies beyond the bound are dropped, not charged."""
    assert relay.proc is not None
    owner, support = FramedChannel(), FramedChannel(stop_after=READ_FIRST)
    payload = bytes(1000)
    async with (
        await agent_conn(relay, agents["nas"]) as nas,
        await agent_conn(relay, agents["tech"]) as tech,
    ):
        await nas.create_server(lambda host, port: owner, "udp/dns", 53)
        rss_before = rss(relay.proc.pid)
        await tech.create_connection(lambda: support, "udp/dns", 53, window=WINDOW)
        support.chan.write(encode(1, b"ping"))
        await poll(lambda: bool(owner.frames), "the relay's flow toward the owner")
        flow_id = owner.frames[0].flow_id
        for _ in range(POURS):  # the owner's service answers far more than the peer reads
            owner.chan.write(b"".join(encode(flow_id, payload) for _ in range(1000)))
            await poll(lambda: owner.chan.get_write_buffer_size() < MiB, "the relay reading")
        await asyncio.wait_for(support.stopped.wait(), 30)
        await other.transfer()
        (flow,) = await relay.call("streams")
        kernel = in_kernel(relay.ssh_port, tech.get_extra_info("sockname")[1])
        held = flow["bytes_down"] - support.received - kernel
        assert flow["bytes_down"] - support.received < OVERCHARGE, flow
        assert held < WRITE_BUFFER + ONE_CHUNK, f"{held} bytes charged, not read, not in kernel"
        assert flow["bytes_dropped"] >= POURS * MiB // 2, flow
        assert rss(relay.proc.pid) - rss_before < RSS_GROWTH
