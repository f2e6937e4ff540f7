"""In Chromium: buying a package on the console resumes a stream paused on quota, byte-exact.

A real billing API process, a real relay synced with it, stock OpenSSH agents
and a TCP service: the purchase goes through the console's form, and the push
the service sends after its commit wakes the paused stream on the relay.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.rigs.billing import Billing, synced_relay
from tests.rigs.browser import Browser
from tests.rigs.relay import Relay
from tests.rigs.services import DigestService, pattern, sha
from tests.rigs.ssh import Ssh, expose, local_forward
from tests.rigs.waits import poll

MB = 1_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def billing(tmp_path: Path) -> AsyncIterator[Billing]:
    b = Billing(tmp_path, plan_traffic=4 * MB, package_traffic=4 * MB)
    await b.start()
    yield b
    await b.close()


@pytest.fixture
async def clients() -> AsyncIterator[list[Ssh]]:
    started: list[Ssh] = []
    yield started
    for c in started:
        await c.stop()


async def _states(relay: Relay) -> list[str]:
    return [s["state"] for s in await relay.call("streams")]


async def test_buying_a_package_in_the_console_resumes_the_paused_stream(
    tmp_path: Path, billing: Billing, browser: Browser, clients: list[Ssh]
) -> None:
    """The stream pauses at the plan's 4 MB; Buy on the console delivers the rest, same socket."""
    account = await billing.account("acme", 10_000)
    client = await billing.agent(tmp_path, account, "nas", "client")
    support = await billing.agent(tmp_path, account, "tech", "support")
    await billing.api("POST", f"/v1/agents/{client.agent_id}/subscription", {"plan": "small"})
    relay = synced_relay(tmp_path, billing, interval="30s")  # only the push is this quick
    await relay.start()
    payload = pattern(6 * MB, 31)
    try:

        async def known() -> bool:
            listed = {a["agent_id"] for a in await relay.call("agents")}
            return {client.agent_id, support.agent_id} <= listed

        await poll(known, "the relay to learn the agents")
        async with DigestService(half_close=False) as service:
            await expose(relay, client, f"nas:22:127.0.0.1:{service.port}", clients)
            port = _free_port()
            await local_forward(relay, support, port, "nas:22", clients)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(payload)
            await poll(lambda: _opened(relay), "the stream", timeout=20)
            await poll(lambda: _paused(relay), "the stream to pause on quota", timeout=60)
            conn = service.conns[0]
            assert conn.received <= 4 * MB and not reader.at_eof()

            link = await billing.api("POST", f"/v1/accounts/{account}/console-links")
            await browser.get(billing.url + link["path"])
            await browser.do(
                lambda d: d.find_element(By.CSS_SELECTOR, "#link-sign-in button").click()
            )
            await poll(lambda: _has(browser, 'id="balance"'), "the overview")
            assert conn.received <= 4 * MB  # signing in bought nothing

            def buy(d: object) -> None:
                form = f"form[action='/console/agents/{client.agent_id}/packages']"
                Select(
                    browser.driver.find_element(By.CSS_SELECTOR, f"{form} select")
                ).select_by_value("pack")
                browser.driver.find_element(By.CSS_SELECTOR, f"{form} button").click()

            await browser.do(buy)
            await poll(lambda: conn.received == len(payload), "the rest after the purchase", 15)
            await poll(lambda: _has(browser, "Package bought"), "the purchase notice")
            writer.write_eof()
            await asyncio.wait_for(conn.eof.wait(), 20)
            assert conn.digest.hexdigest() == sha(payload) and len(service.conns) == 1
            writer.close()
    finally:
        await relay.stop()
    ledger = await billing.api("GET", f"/v1/accounts/{account}/ledger?kind=package")
    assert [e["reason"] for e in ledger["entries"]] == ["bought: 1 x pack"]


async def _opened(relay: Relay) -> bool:
    return bool(await _states(relay))


async def _paused(relay: Relay) -> bool:
    return await _states(relay) == ["paused"]


async def _has(browser: Browser, text: str) -> bool:
    return text in await browser.source()
