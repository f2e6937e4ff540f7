"""A real Prometheus server scrapes the relay and the billing API and counts the relay's bytes.

Prometheus comes from Debian's `prometheus` package, which `sh bench/install_tools.sh`
(run by `make test`) installs when it can. Without it the test skips, saying so,
except under CI (CI set), where a missing tool is a failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.rigs.billing import Billing
from tests.rigs.keys import AgentSpec
from tests.rigs.procs import free_port
from tests.rigs.relay import Relay
from tests.rigs.services import DigestService, exchange, pattern
from tests.rigs.ssh import Ssh, expose, local_forward
from tests.rigs.waits import poll

CONFIG = """global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: relay
    static_configs: [{{targets: ["127.0.0.1:{relay}"]}}]
  - job_name: billing
    static_configs: [{{targets: ["127.0.0.1:{billing}"]}}]
"""


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or shutil.which("prometheus", path="/usr/bin")
    if found is None:
        reason = (
            "prometheus is not installed (Debian package prometheus; sh bench/install_tools.sh)"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


class Prometheus:
    """A Prometheus server on 127.0.0.1 with its own storage folder, stopped on exit."""

    def __init__(self, binary: str, folder: Path, relay_port: int, billing_port: int) -> None:
        self.binary, self.folder = binary, folder
        self.config = folder / "prometheus.yml"
        self.config.write_text(CONFIG.format(relay=relay_port, billing=billing_port))
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Prometheus:
        with (self.folder / "prometheus.log").open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                self.binary, f"--config.file={self.config}",
                f"--storage.tsdb.path={self.folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def query(self, promql: str) -> list[dict[str, Any]]:
        """The result vector of an instant query; empty while the server is not up yet."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query"
        timeout = aiohttp.ClientTimeout(total=5)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url, params={"query": promql}) as resp,
            ):
                body = await resp.json()
        except (aiohttp.ClientError, TimeoutError):
            return []
        assert body.get("status") == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def value(self, promql: str) -> str | None:
        result = await self.query(promql)
        return str(result[0]["value"][1]) if len(result) == 1 else None


@pytest.fixture
async def billing(tmp_path: Path) -> AsyncIterator[Billing]:
    (tmp_path / "billing").mkdir()
    b = Billing(tmp_path / "billing", metrics_listen="127.0.0.1:0")
    await b.start()
    yield b
    await b.close()


async def test_prometheus_scrapes_relay_and_billing_byte_exact(
    tmp_path: Path, agents: dict[str, AgentSpec], billing: Billing, clients: list[Ssh]
) -> None:
    """Prometheus's query of the relay's byte counter equals the bytes relayed, to the byte."""
    binary = prometheus_binary()
    relay = Relay(tmp_path, list(agents.values()), extra={"metrics": {"listen": "127.0.0.1:0"}})
    await relay.start()
    try:
        async with Prometheus(binary, tmp_path, relay.ready["metrics"], billing.metrics_port) as p:
            up, down = 123_457, 654_321
            await relay.call("grant", "nas-agent", 10**9)
            async with DigestService(send=pattern(down, 1)) as service:
                await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{service.port}", clients)
                port = free_port()
                await local_forward(relay, agents["tech"], port, "nas:22", clients)
                assert (await exchange(port, pattern(up, 2), down))[1] == down
                await poll(lambda: bool(service.conns) and service.conns[0].received == up, "up")
            query = 'sum(quotarelay_relay_bytes_total{agent="nas-agent"})'

            async def counted() -> bool:
                return await p.value(query) == str(up + down)

            await poll(counted, f"Prometheus to report {up + down} bytes", timeout=60)
            print(f"prometheus: {query} = {await p.query(query)}")  # shown with -s
            direction = 'quotarelay_relay_bytes_total{agent="nas-agent",direction="down"}'
            assert await p.value(direction) == str(down)
            await poll(_billing_up(p), "Prometheus to scrape the billing API", timeout=30)
    finally:
        await relay.stop()


def _billing_up(p: Prometheus) -> Any:
    async def check() -> bool:
        pending = await p.value('quotarelay_billing_webhooks_pending{job="billing"}')
        return pending == "0" and await p.value('up{job="billing"}') == "1"

    return check
