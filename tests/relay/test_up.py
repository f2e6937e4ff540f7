"""`quotarelay up`: billing API and relay; the printed ssh commands work; Ctrl-C stops both."""

from __future__ import annotations

import asyncio
import shlex
import signal
import socket
import sys
from pathlib import Path

from tests.rigs.relay import ROOT
from tests.rigs.services import DigestService, exchange, pattern, sha


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ctrl_c_as_in_a_terminal() -> None:
    """Undo an ignored SIGINT inherited from a run started in the background."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def _read_until(stream: asyncio.StreamReader, needle: str, seen: list[str]) -> None:
    while True:
        line = (await stream.readline()).decode()
        if not line:
            raise AssertionError(f"ended before {needle!r}: {''.join(seen)}")
        seen.append(line)
        if needle in line:
            return


async def test_up_prints_commands_that_work_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """The demo relay's printed client and support commands carry data byte-exact."""
    ssh_port, admin_port, local, billing = free_port(), free_port(), free_port(), free_port()
    async with DigestService(send=b"hello from the demo service") as service:
        up = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tools.cli", "up", "--dir", str(tmp_path / "demo"),
            "--ssh-port", str(ssh_port), "--admin-port", str(admin_port),
            "--billing-port", str(billing),
            "--service-port", str(service.port), "--local-port", str(local),
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=_ctrl_c_as_in_a_terminal,
        )  # fmt: skip
        assert up.stdout is not None
        seen: list[str] = []
        await asyncio.wait_for(_read_until(up.stdout, "Ctrl-C stops", seen), 30)
        commands = [x.strip() for x in seen if x.strip().startswith("ssh ")]
        assert len(commands) == 3
        agents = []
        try:
            for cmd, ready in ((commands[0], "remote forward success"), (commands[1], "Entering")):
                proc = await asyncio.create_subprocess_exec(
                    *shlex.split(cmd), "-v", "-o", "BatchMode=yes",
                    stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                agents.append(proc)
                assert proc.stderr is not None
                await asyncio.wait_for(_read_until(proc.stderr, ready, []), 20)
            digest, got = await exchange(local, pattern(1000, 3), 27)
            assert (digest, got) == (sha(b"hello from the demo service"), 27)
        finally:
            for proc in agents:
                proc.terminate()
                await proc.wait()
            up.send_signal(signal.SIGINT)
            try:
                code = await asyncio.wait_for(up.wait(), 20)
            finally:
                if up.returncode is None:  # never leave it running, whatever failed
                    up.kill()
                    await up.wait()
    assert code == 0
