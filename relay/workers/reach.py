"""Reaching an endpoint whose client agent is connected to another worker.

The bytes cross between workers through the kernel: the owner's worker makes a
socket pair per stream, joins one end to the owner's channel as an ordinary
metered stream (it is logged and metered there, once), and passes the other end
(SCM_RIGHTS, over the supervisor's descriptor channel) to the support agent's
worker, which splices it to the support agent's channel. The supervisor only
routes the descriptor; no byte of the stream passes through it.

Invariants:
- Descriptor-channel messages are SOCK_SEQPACKET datagrams (one message, at
  most one descriptor each); a descriptor received is owned by the receiver.
- The support agent's worker never meters or logs the stream (the owner's
  worker does); its splice holds the support channel back when the socket's
  write buffer is full and the socket back when the channel cannot send, so
  nothing piles up in user space.
- A UDP endpoint is reached the same way: its framed channel crosses in the
  socket pair, and the owner's worker runs the support session (flows, meters,
  records) on its end as if the socket were the support agent's channel.
- A reach nobody answers within REACH_TIMEOUT_S is refused like a missing endpoint.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
from collections.abc import Callable
from typing import Any, cast

import asyncssh

from quota.core.shares import Share
from relay.errors import Refused
from relay.hub.hub import Hub
from relay.hub.tunnels import ENDPOINT, UDP_ENDPOINT, is_address
from relay.registry import Agent
from relay.ssh.backlog import NEVER_FULL, backlog_of
from relay.ssh.fastsend import FastSender, fast_sender
from relay.ssh.quicken import quicken
from relay.tcp.tunnels import TcpTunnels
from relay.udp.channels import SupportSession
from relay.udp.relay import UDP_PREFIX, udp_for
from relay.workers.messages import Message, Reach, Reached, decode, encode

REACH_TIMEOUT_S = 10.0
MAX_MESSAGE = 64 * 1024

OnMessage = Callable[[Message, int | None], None]


class FdChannel:
    """A SOCK_SEQPACKET unix socket that carries messages, each with at most one descriptor."""

    def __init__(self, sock: socket.socket, on_message: OnMessage) -> None:
        self.sock = sock
        self.on_message = on_message
        self._reading = False

    def start(self) -> None:
        self.sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)
        self._reading = True

    def send(self, message: Message, fd: int | None = None) -> None:
        # the other side may be gone: its reach times out, or it is started again
        self.try_send(message, fd)

    def try_send(self, message: Message, fd: int | None = None) -> bool:
        """Send; False if it could not be (the other side is gone or its queue is full)."""
        try:
            socket.send_fds(self.sock, [encode(message)], [] if fd is None else [fd])
        except OSError:
            return False
        return True

    def _readable(self) -> None:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_MESSAGE, 1)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                self.close()
                return
            self.on_message(decode(data), fds[0] if fds else None)

    def close(self) -> None:
        if self._reading:
            self._reading = False
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


# -- the support agent's worker -----------------------------------------------------


def _no_views(chan: Any) -> bool:
    """The splice hands the socket bytes, not views of asyncssh's buffer."""
    return False


class _ChannelSide(asyncssh.SSHTCPSession[bytes]):
    """The support agent's channel, spliced to the socket toward the owner's worker.

    The socket is read only while neither the channel (its window, `pause_writing`)
    nor the SSH connection's write buffer (relay.ssh.backlog: a peer may advertise
    a huge window and stop reading) is full: two reasons, composed as a set.
    """

    def __init__(self, other: _SocketSide, write_buffer: int) -> None:
        self.other = other
        self.write_buffer = write_buffer
        self.chan: Any = None
        self.fast: FastSender | None = None
        self.backlog = NEVER_FULL
        self.backed_up = False  # relay.ssh.backlog.Writer
        self.lost = False
        self._holds: set[str] = set()  # why the socket is not read: "window", "backlog"

    def connection_made(self, chan: Any) -> None:
        self.chan = chan
        quicken(chan, _no_views)  # the byte path's own trims of asyncssh's per-packet work
        conn = chan.get_connection()
        self.fast = fast_sender(conn)
        self.backlog = backlog_of(conn, self.write_buffer)
        self.other.joined(self)

    def write(self, data: bytes) -> None:
        if self.fast is not None:
            self.fast.send(self.chan, data)
        else:
            self.chan.write(data)
        if self.backlog.full and not self.backed_up:
            self.backlog.hold(self)

    def on_backlog(self, full: bool) -> None:
        self._hold("backlog", full)

    def _hold(self, reason: str, on: bool) -> None:
        before = bool(self._holds)
        if on:
            self._holds.add(reason)
        else:
            self._holds.discard(reason)
        if before != bool(self._holds):
            if self._holds:
                self.other.pause_reading()
            else:
                self.other.resume_reading()

    def data_received(self, data: bytes, datatype: Any) -> None:
        self.other.write(data)

    def eof_received(self) -> bool:
        self.other.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.backlog.forget(self)
        self.other.close()

    def pause_writing(self) -> None:
        self._hold("window", True)

    def resume_writing(self) -> None:
        self._hold("window", False)


class _SocketSide(asyncio.Protocol):
    """The end of the stream's socket pair in the support agent's worker.

    For a UDP endpoint the owner's worker only ever closes its end whole (the
    tunnel went): end of file closes the support agent's channel, so the agent
    reopens toward the tunnel that replaces it, as it does in one process.
    """

    def __init__(self, *, udp: bool = False) -> None:
        self.udp = udp
        self.transport: Any = None
        self.channel: _ChannelSide | None = None
        self.early: list[bytes] = []  # bytes from the owner before the channel is up
        self.early_eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def joined(self, channel: _ChannelSide) -> None:
        self.channel = channel
        for data in self.early:
            channel.write(data)
        self.early.clear()
        if self.early_eof:
            channel.chan.write_eof()
        if self.lost:
            channel.chan.close()

    def data_received(self, data: bytes) -> None:
        if self.channel is None:
            self.early.append(data)
        else:
            self.channel.write(data)

    def eof_received(self) -> bool:
        if self.udp:
            return False  # the transport closes: connection_lost closes the channel
        if self.channel is None:
            self.early_eof = True
        else:
            self.channel.chan.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.channel is not None:
            self.channel.chan.close()

    def pause_writing(self) -> None:
        if self.channel is not None:
            self.channel.chan.pause_reading()

    def resume_writing(self) -> None:
        if self.channel is not None:
            self.channel.chan.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def write_eof(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write_eof()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class RemoteReach:
    """Both halves of cross-worker reach, for one worker."""

    def __init__(self, hub: Hub, channel_sock: socket.socket) -> None:
        self.hub = hub
        self.tcp = TcpTunnels(hub)
        self.fds = FdChannel(channel_sock, self._on_message)
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[tuple[Reached, int | None]]] = {}
        self.on_other: OnMessage | None = None  # what else comes on the channel

    def start(self) -> None:
        self.fds.start()

    def close(self) -> None:
        self.fds.close()

    def wants(self, agent: Agent, host: str, port: int) -> bool:
        """Should this channel open be asked of the other workers?"""
        name, kind = _endpoint(host)
        if not agent.role.may_connect or is_address(name):
            return False
        return self.hub.tunnels.find_endpoint(agent.account, name, port, kind=kind) is None

    async def reach(self, agent: Agent, host: str, port: int, orig: tuple[str, int]) -> Any:
        """The support side's session for an endpoint another worker holds, or a refusal."""
        req = next(self._ids)
        future: asyncio.Future[tuple[Reached, int | None]] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting[req] = future
        name, kind = _endpoint(host)
        ask = Reach(
            req=req,
            udp=kind == UDP_ENDPOINT,
            account=agent.account,
            name=name,
            port=port,
            support_id=agent.agent_id,
            orig_host=orig[0],
            orig_port=orig[1],
        )
        self.fds.send(ask)
        try:
            answer, fd = await asyncio.wait_for(future, REACH_TIMEOUT_S)
        except TimeoutError:
            answer, fd = Reached(req=req, status="none"), None
        finally:
            self._waiting.pop(req, None)
        if answer.status != "ok" or fd is None:
            missing = "no UDP endpoint" if kind == UDP_ENDPOINT else "no endpoint"
            message = answer.message or f"{missing} {name}:{port} in your account"
            self.hub.refuse(None, agent, f"open {host}:{port}", message)
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, f"quotarelay: {message}"
            )
        side = _SocketSide(udp=kind == UDP_ENDPOINT)
        sock = socket.socket(fileno=fd)
        await asyncio.get_running_loop().connect_accepted_socket(lambda: side, sock)
        return _ChannelSide(side, self.hub.config.write_buffer)

    def _on_message(self, message: Message, fd: int | None) -> None:
        if isinstance(message, Reached):
            future = self._waiting.get(message.req)
            if future is not None and not future.done():
                future.set_result((message, fd))
            elif fd is not None:
                os.close(fd)
        elif isinstance(message, Reach):
            self.hub.spawn(self._answer(message), f"reach-{message.req}")
        elif self.on_other is not None:
            self.on_other(message, fd)  # connections to the SSH port (relay.workers.door)
        elif fd is not None:
            os.close(fd)

    # -- the owner's worker -------------------------------------------------------------

    async def _answer(self, ask: Reach) -> None:
        if ask.udp:
            self._answer_udp(ask)
            return
        hub = self.hub
        tunnel = hub.tunnels.find_endpoint(ask.account, ask.name, ask.port)
        if tunnel is None:
            self.fds.send(Reached(req=ask.req, status="none"))
            return
        peer = f"support:{ask.support_id}@{ask.orig_host}:{ask.orig_port}"
        try:
            if hub.bucket_for(tunnel.agent).inactive:
                raise Refused(f"endpoint {ask.name}:{ask.port} belongs to an inactive agent")
            held = self.tcp.take_shares(tunnel, peer, (Share.STREAMS_PER_TUNNEL, tunnel.tunnel_id))
        except Refused as exc:
            self.fds.send(Reached(req=ask.req, status="refused", message=str(exc)))
            return
        ours, theirs = _pair()
        try:
            orig = (ask.orig_host, ask.orig_port)
            await self.tcp.bridge_socket(tunnel, peer, held, ours, orig)
        except asyncssh.ChannelOpenError as exc:
            self.fds.send(Reached(req=ask.req, status="refused", message=exc.reason))
        else:
            self.fds.send(Reached(req=ask.req, status="ok"), theirs.fileno())
        finally:
            theirs.close()

    def _answer_udp(self, ask: Reach) -> None:
        hub = self.hub
        if hub.tunnels.find_endpoint(ask.account, ask.name, ask.port, kind=UDP_ENDPOINT) is None:
            self.fds.send(Reached(req=ask.req, status="none"))
            return
        support = hub.registry.get(ask.support_id)
        orig = (ask.orig_host, ask.orig_port)
        try:
            if support is None:
                raise Refused(f"no UDP endpoint {ask.name}:{ask.port} in your account")
            host = UDP_PREFIX + ask.name
            session = udp_for(hub).support_session(support, host, ask.port, orig)
        except Refused as exc:
            self.fds.send(Reached(req=ask.req, status="refused", message=str(exc)))
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        hub.spawn(self._serve_udp(session, ours), f"reach-udp-{ask.req}")
        self.fds.send(Reached(req=ask.req, status="ok"), theirs.fileno())
        theirs.close()

    async def _serve_udp(self, session: SupportSession, sock: socket.socket) -> None:
        channel = _SocketChannel(session, self.hub.config.write_buffer)
        await asyncio.get_running_loop().connect_accepted_socket(lambda: channel, sock)


# The kernel buffer of each end of a stream's socket pair (SO_SNDBUF, which Linux
# doubles). At 32 KiB each read on the owner's side took a part of a 32 KiB SSH
# packet and each full buffer paused the other worker's channel: the relay spent
# 6.2 CPU-s a GB with two workers against 4.5 at 128 KiB (`bench --only workers`,
# eight crossing streams; one worker 3.6-4.5). A stalled reader costs at most this
# in kernel memory each way, beside the `write_buffer` it would cost in one process.
PAIR_KERNEL = 128 * 1024


def _pair() -> tuple[socket.socket, socket.socket]:
    """A stream's socket pair between workers, its kernel buffers kept to PAIR_KERNEL each way."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for end in (ours, theirs):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PAIR_KERNEL)
    return ours, theirs


def _endpoint(host: str) -> tuple[str, str]:
    """The endpoint name and kind a channel open names ("udp/dns" is a UDP endpoint)."""
    if host.startswith(UDP_PREFIX):
        return host[len(UDP_PREFIX) :].lower(), UDP_ENDPOINT
    return host.lower(), ENDPOINT


class _NoConnection:
    """Stands for the SSH connection under a channel: a socket pair has no shared buffer."""


class _SocketChannel(asyncio.Protocol):
    """The owner's worker's end of a UDP reach, dressed as the channel a framed session expects."""

    def __init__(self, session: SupportSession, write_buffer: int) -> None:
        self.session = session
        self.write_buffer = write_buffer
        self.transport: Any = None
        self._conn = _NoConnection()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        # what an SSH connection's buffer holds (relay.ssh.backlog): datagrams beyond are dropped
        cast(asyncio.WriteTransport, transport).set_write_buffer_limits(high=self.write_buffer)
        self.session.connection_made(self)

    def data_received(self, data: bytes) -> None:
        self.session.data_received(data, None)

    def eof_received(self) -> bool:
        return bool(self.session.eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.connection_lost(exc)

    def pause_writing(self) -> None:
        self.session.pause_writing()

    def resume_writing(self) -> None:
        self.session.resume_writing()

    # -- what the session calls on its channel ---------------------------------------

    def get_connection(self) -> Any:
        return self._conn

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
