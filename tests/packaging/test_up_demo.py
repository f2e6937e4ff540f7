"""`make up` and `quotarelay up`: runtime install only, ARGS, a demo service, a pause in seconds.

The demo runs as `python -m tools.cli up` with real OpenSSH agents pasted from
its banner; the download through the relay is checked byte for byte.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.rigs.waits import poll
from tools.demo_service import DemoService, pattern_bytes

ROOT = Path(__file__).resolve().parents[2]
SIX_MB = 6_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ctrl_c_as_in_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_make_up_installs_the_runtime_only_and_passes_args() -> None:
    """`make -n -B up ARGS=...`: pip installs `-e .` (no dev extras), runs `quotarelay up ARGS`."""
    # run by `make test`, make's own variables would make the inner make print its folders
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE") and k != "MFLAGS"}
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", "up", "ARGS=--ssh-port 2200 --dir var/demo2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.splitlines()
    installs = [line for line in out if "pip install" in line]
    assert installs and all("dev" not in line and line.endswith("-e .") for line in installs)
    assert any("--progress-bar on" in line for line in installs)
    assert sum("==> [" in line for line in out) == 3  # the steps are announced
    assert out[-1] == ".venv/bin/quotarelay up --ssh-port 2200 --dir var/demo2"


async def test_demo_service_answers_and_steps_aside_from_a_taken_port() -> None:
    """GET /bytes/SIZE answers exactly SIZE bytes; a taken port leaves it not running."""
    async with DemoService(0) as svc, aiohttp.ClientSession() as http:
        assert svc.running
        async with http.get(f"http://127.0.0.1:{svc.port}/bytes/100K") as resp:
            assert await resp.read() == pattern_bytes(100_000)
        async with http.get(f"http://127.0.0.1:{svc.port}/bytes/lots") as resp:
            assert resp.status == 400
        async with DemoService(svc.port) as second:
            assert not second.running


class Up:
    """`quotarelay up` in a child process, its banner lines, and its demo folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ports = {
            name: free_port() for name in ("ssh-port", "admin-port", "billing-port", "local-port")
        }
        self.ports["service-port"] = free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self.banner: list[str] = []

    async def start(self) -> Up:
        flags = [f"--{name}={port}" for name, port in self.ports.items()]
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tools.cli", "up", "--dir", str(self.folder), *flags,
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=_ctrl_c_as_in_a_terminal,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.banner = []
        while not any("Ctrl-C stops" in line for line in self.banner):
            line = (await asyncio.wait_for(self.proc.stdout.readline(), 30)).decode()
            assert line, f"up ended early: {self.banner}"
            self.banner.append(line.rstrip("\n"))
        return self

    def line(self, pattern: str) -> re.Match[str]:
        for line in self.banner:
            found = re.search(pattern, line)
            if found:
                return found
        raise AssertionError(f"no line matching {pattern!r} in {self.banner}")

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                return await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
        return await self.proc.wait()

    def token(self, name: str) -> str:
        return (self.folder / name).read_text().strip()


@pytest.fixture
async def agents() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    started: list[asyncio.subprocess.Process] = []
    yield started
    for proc in started:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def _agent(cmd: str, ready: str, started: list[asyncio.subprocess.Process]) -> None:
    proc = await asyncio.create_subprocess_exec(
        *shlex.split(cmd), "-v", "-o", "BatchMode=yes",
        stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    started.append(proc)
    assert proc.stderr is not None
    seen: list[bytes] = []
    while ready.encode() not in b"".join(seen[-1:]):
        line = await asyncio.wait_for(proc.stderr.readline(), 20)
        assert line, f"ssh ended before {ready!r}: {b''.join(seen)!r}"
        seen.append(line)


async def test_up_pauses_at_the_small_plan_a_package_resumes_and_a_restart_shows_the_balance(
    tmp_path: Path, agents: list[asyncio.subprocess.Process]
) -> None:
    """6 MB through a 4 MB plan pause until a package is bought; the restarted banner is fresh."""
    up = await Up(tmp_path / "demo").start()
    try:
        assert up.line(r"balance (\S+) coin").group(1) == "15.000"
        assert up.line(r"(\S+) bytes of traffic left").group(1) == "4,000,000"
        up.line(rf"demo service \(started here\) listens on 127.0.0.1:{up.ports['service-port']}")
        bin_dir = Path(sys.executable).parent
        assert up.line(r"PATH.*").group(0) in (
            f'PATH: export PATH="{bin_dir}:$PATH"',
            "PATH.",  # when this interpreter's quotarelay is already on PATH
        )
        commands = [line.strip() for line in up.banner if line.strip().startswith("ssh ")]
        await _agent(commands[0], "remote forward success", agents)
        await _agent(commands[1], "Entering", agents)
        client = up.line(r"Client agent (agt_[0-9a-f]+)").group(1)
        admin = {"Authorization": f"Bearer {up.token('admin.token')}"}
        billing = {
            "Authorization": f"Bearer {up.token('billing-admin.token')}",
            "Idempotency-Key": "test-package",
        }
        relay = f"http://127.0.0.1:{up.ports['admin-port']}"
        received = bytearray()
        async with aiohttp.ClientSession() as http:

            async def download() -> None:
                url = f"http://127.0.0.1:{up.ports['local-port']}/bytes/6M"
                async with http.get(url) as resp:
                    async for chunk in resp.content.iter_any():
                        received.extend(chunk)

            task = asyncio.create_task(download())

            async def paused() -> bool:
                async with http.get(f"{relay}/v1/agents/{client}", headers=admin) as r:
                    view: dict[str, Any] = await r.json()
                spent = view["used"] >= 3_900_000  # not the wait for the first lease
                return spent and view["state"] == "depleted" and view["waiting"] >= 1

            await poll(paused, "the download to pause at the end of the 4 MB plan")
            await poll(lambda: len(received) > 3_900_000, "the bytes before the pause")
            assert len(received) < 4_000_000
            url = f"http://127.0.0.1:{up.ports['billing-port']}/v1/agents/{client}/packages"
            async with http.post(url, json={"package": "4M"}, headers=billing) as r:
                assert r.status == 200, await r.text()
            await asyncio.wait_for(task, 20)
        assert bytes(received) == pattern_bytes(SIX_MB)
        assert await up.stop() == 0
        await up.start()
        assert up.line(r"balance (\S+) coin").group(1) == "14.500"
        left = int(up.line(r"(\S+) bytes of traffic left").group(1).replace(",", ""))
        assert 0 < left < 4_000_000  # 8 MB bought, 6 MB and the requests used
    finally:
        assert await up.stop() == 0
