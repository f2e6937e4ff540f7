"""The first workers, forked from the relay's process before its event loop starts.

Invariants:
- `fork_workers` runs before any event loop or thread exists in the process
  (the command line calls it between reading the config and starting the loop),
  so a child holds nothing half-locked; it needs no interpreter of its own and
  no second import of the relay (about 1.1 s of CPU each on this machine's
  kind), so a relay of workers starts about as fast as one process.
- Each child keeps only its own two descriptors (its message link and its
  descriptor channel) of those made here, runs `run_worker` on a fresh loop and
  leaves with `os._exit`: none of the parent's exit handlers or buffers run twice.
- The supervisor adopts each child once (`take`) as its first start of that
  slot; a worker started again after it died is a new process from
  `python -m relay.workers.worker`, as before. Children the supervisor never
  adopts (a start that failed) see their link close and exit.
- Where `os.pidfd_open` is missing (not Linux), nothing is forked: every worker
  is started as a new process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from relay.config import RelayConfig
from relay.errors import ConfigError
from relay.workers.worker import run_worker  # imported once, here: each child has it


@dataclass(slots=True)
class Forked:
    """A child forked for one worker slot: its pid and the supervisor's two ends."""

    pid: int
    link: socket.socket  # SOCK_STREAM: the message link
    fds: socket.socket  # SOCK_SEQPACKET: the descriptor channel


@dataclass(slots=True)
class Preforked:
    """What `fork_workers` made: the held SSH address and the children by slot."""

    held: socket.socket
    children: dict[int, Forked] = field(default_factory=dict)

    def take(self, index: int) -> Forked | None:
        return self.children.pop(index, None)

    def close(self) -> None:
        """Close the ends of children never adopted: each sees its link close and exits."""
        for child in self.children.values():
            child.link.close()
            child.fds.close()
        self.children.clear()


def hold_port(config: RelayConfig) -> socket.socket:
    """Bind (not yet listen) the SSH address: the door listens once every worker is ready."""
    host, port = config.ssh_listen.host, config.ssh_listen.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"relay.ssh_listen: cannot listen on {config.ssh_listen}: {exc.strerror}"
        ) from None
    return sock


def can_fork() -> bool:
    return hasattr(os, "pidfd_open") and hasattr(os, "fork")


def fork_workers(config: RelayConfig, source: Path) -> Preforked:
    """Bind the SSH address and fork `config.workers` children, each running one worker."""
    held = hold_port(config)
    ssh_port = held.getsockname()[1]
    ends = [
        (
            socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM),
            socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET),
        )
        for _ in range(config.workers)
    ]
    made = Preforked(held)
    for sys_stream in (sys.stdout, sys.stderr):
        sys_stream.flush()  # nothing buffered is written twice
    for index, ((link, link_child), (fds, fds_child)) in enumerate(ends):
        pid = os.fork()
        if pid == 0:
            mine = {link_child.fileno(), fds_child.fileno()}
            held.close()
            for pair in ends:
                for end in (*pair[0], *pair[1]):
                    if end.fileno() not in mine and end.fileno() != -1:
                        end.close()
            _child(source, index, link_child.detach(), fds_child.detach(), ssh_port)
        made.children[index] = Forked(pid=pid, link=link, fds=fds)
    for (_, link_child), (_, fds_child) in ends:
        link_child.close()
        fds_child.close()
    return made


def _child(source: Path, index: int, ipc_fd: int, fd_channel: int, ssh_port: int) -> None:
    """Run one worker in this forked child and leave the process with its exit code."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop
        from relay.loop import run

        code = run(run_worker(source, index, ipc_fd, fd_channel, ssh_port))
    except BaseException:
        with contextlib.suppress(Exception):
            import traceback

            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


class ForkedProcess:
    """A forked child as the supervisor uses an asyncio subprocess: pid, wait, signals.

    Its exit is seen through a pidfd on the running loop, and it is reaped here
    (it is this process's child; no child watcher knows it).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        loop = asyncio.get_running_loop()
        self._done: asyncio.Future[int] = loop.create_future()
        self._pidfd = os.pidfd_open(pid)
        loop.add_reader(self._pidfd, self._exited)

    def _exited(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: its code is unknown
            pid, status = self.pid, 0
        if pid == 0:
            return
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        self.returncode = os.waitstatus_to_exitcode(status)
        if not self._done.done():
            self._done.set_result(self.returncode)

    async def wait(self) -> int:
        return await asyncio.shield(self._done)

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
