"""Child processes of a bench section: start them, wait for them, read them, stop them all.

Invariants:
- Every child starts in its own session, so `Procs.close` can stop it and any
  children it forked (sshd, socat with `fork`) by its own process group id.
- Every child inherits RLIMIT_NOFILE raised to the hard limit: the bench raises
  its own at start (`raise_nofile`), before any thread or child exists.
- Children write their output to files in the run's folder, never to pipes we
  could forget to drain.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
from pathlib import Path
from types import TracebackType

from tests.rigs.waits import wait_for


def raise_nofile() -> None:
    """Raise this process's open-files soft limit to the hard limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """One started process, its log file and the command that started it."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path, cmd: list[str]):
        self.name, self.popen, self.log, self.cmd = name, popen, log, cmd

    @property
    def pid(self) -> int:
        return self.popen.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_line(self, needle: str, timeout: float = 30.0) -> str:
        """Wait until the log holds a line containing `needle`; return that line."""
        found: list[str] = []

        def check() -> bool:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.text()[-2000:]}")
            found[:] = [ln for ln in self.text().splitlines() if needle in ln][:1]
            return bool(found)

        wait_for(check, f"{needle!r} from {self.name}", timeout)
        return found[0]

    def stop(self) -> None:
        if self.popen.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.popen.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.popen.wait(5)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # children forked by it (sshd sessions, socat forks) share its group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


class Procs:
    """The children of one bench section; closing stops them in reverse order."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.children: list[Child] = []

    def __enter__(self) -> Procs:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(
        self, name: str, cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> Child:
        log = self.folder / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        child = Child(name, popen, log, cmd)
        self.children.append(child)
        return child

    def stop(self, child: Child) -> None:
        child.stop()
        if child in self.children:
            self.children.remove(child)

    def close(self) -> None:
        while self.children:
            self.children.pop().stop()
