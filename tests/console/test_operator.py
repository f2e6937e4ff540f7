"""The relay's operator view on its admin listener, against a real relay process."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from relay.admin.server import AdminServer
from relay.config import HostPort
from relay.errors import UnknownAgent
from tests.console.client import Visitor
from tests.rigs.browser import Browser
from tests.rigs.keys import AgentSpec, make_agent
from tests.rigs.relay import TOKEN, Relay
from tests.rigs.services import DigestService, exchange, pattern, sha
from tests.rigs.ssh import Ssh, expose, local_forward
from tests.rigs.waits import poll

MB = 1_000_000
LOCAL = HostPort(host="127.0.0.1", port=0)


@pytest.fixture
def agents(tmp_path: Path) -> dict[str, AgentSpec]:
    return {
        "nas": make_agent(tmp_path, "nas-agent", "acme", "client"),
        "tech": make_agent(tmp_path, "tech", "acme", "support"),
    }


@pytest.fixture
async def relay(tmp_path: Path, agents: dict[str, AgentSpec]) -> AsyncIterator[Relay]:
    r = Relay(tmp_path, list(agents.values()))
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def clients() -> AsyncIterator[list[Ssh]]:
    started: list[Ssh] = []
    yield started
    for c in started:
        await c.stop()


@pytest.fixture
async def operator(relay: Relay) -> AsyncIterator[Visitor]:
    v = Visitor(f"http://127.0.0.1:{relay.admin_port}")
    yield v
    await v.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _signed_in(operator: Visitor) -> str:
    page = await operator.submit(
        await operator.get("/console/sign-in"), "/console/sign-in", token=TOKEN
    )
    assert page.status == 200 and 'id="agents"' in page.text, page.text
    return page.text


async def test_the_view_needs_the_admin_token_and_keeps_the_api_closed(
    relay: Relay, operator: Visitor
) -> None:
    """No session: pages send to sign-in; a wrong token is 401; the JSON API still needs one."""
    assert (await operator.get("/console")).url.endswith("/console/sign-in")
    assert (await operator.get("/console/")).url.endswith("/console/sign-in")
    assert (await operator.get("/console/streams.json")).url.endswith("/console/sign-in")
    wrong = await operator.submit(
        await operator.get("/console/sign-in"), "/console/sign-in", token="nope"
    )
    assert wrong.status == 401 and "wrong admin token" in wrong.text
    await _signed_in(operator)
    assert (await operator.get("/v1/agents")).status == 401  # the cookie is no bearer token
    assert (await operator.get("/consolex")).status == 401  # only the view's own paths are open
    page = await operator.get("/console/")
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert '<script src="/console/static/live.js" defer></script>' in page.text


async def test_grant_and_deactivate_buttons_change_the_relay(
    relay: Relay, operator: Visitor
) -> None:
    """Grant adds to the bucket; Deactivate makes the agent inactive; a forged form does nothing."""
    text = await _signed_in(operator)
    assert re.search(r'<tr id="agent-nas-agent">\s*<td>nas-agent</td><td>acme</td>', text)
    tech = text.split('<tr id="agent-tech">', 1)[1].split("</tr>", 1)[0]
    assert '<td class="state">n/a (pays nothing)</td>' in tech  # support agents pay nothing
    index = await operator.get("/console/")
    granted = await operator.submit(index, "/console/agents/nas-agent/grant", bytes="10M")
    assert granted.status == 200 and "Granted." in granted.text
    assert (await relay.call("agent", "nas-agent"))["granted"] == 10 * MB
    forged = await operator.post(
        "/console/agents/nas-agent/state", {"active": "0", "csrf": "0" * 64}
    )
    assert forged.status == 403 and (await relay.call("agent", "nas-agent"))["state"] != "inactive"
    changed = await operator.submit(
        await operator.get("/console/"), "/console/agents/nas-agent/state"
    )
    assert changed.status == 200 and (await relay.call("agent", "nas-agent"))["state"] == "inactive"
    bad = await operator.submit(
        await operator.get("/console/"), "/console/agents/nas-agent/grant", bytes="lots"
    )
    assert bad.status == 400 and "bytes:" in bad.text


async def test_stream_log_search_by_agent_tunnel_and_time(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh], operator: Visitor
) -> None:
    """A closed stream is found by its agent, its tunnel and a time window; others are not."""
    await relay.call("grant", "nas-agent", 10 * MB)
    data = pattern(MB, 5)
    async with DigestService(send=data) as service:
        await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{service.port}", clients)
        port = _free_port()
        await local_forward(relay, agents["tech"], port, "nas:22", clients)
        assert await exchange(port, b"hello", MB) == (sha(data), MB)
    await _signed_in(operator)
    tunnel = "acme/nas-agent/tcp_endpoint/nas:22"

    async def found(**query: str) -> str:
        return (await operator.get("/console/log", **query)).text

    async def closed() -> bool:
        return "closed" in await found(agent="nas-agent")

    await poll(closed, "the stream's close record")
    by_agent = await found(agent="nas-agent", since="1h")
    assert 'id="found">1 stream(s)' in by_agent and "1.0 MB" in by_agent and tunnel in by_agent
    assert 'id="found">1 stream(s)' in await found(tunnel=tunnel)
    assert 'id="found">0 stream(s)' in await found(agent="tech")
    assert 'id="found">0 stream(s)' in await found(tunnel="acme/nas-agent/tcp_endpoint/web:80")
    bad = await operator.get("/console/log", since="yesterday")
    assert bad.status == 400 and "since:" in bad.text


async def test_live_streams_refresh_on_their_own(
    relay: Relay,
    agents: dict[str, AgentSpec],
    clients: list[Ssh],
    browser: Browser,
) -> None:
    """In Chromium the live table shows a stream opened after the page loaded, without reload."""
    base = f"http://127.0.0.1:{relay.admin_port}/console/"
    await browser.get(base + "sign-in")
    await browser.do(lambda d: d.switch_to.active_element.send_keys(TOKEN, Keys.ENTER))
    await poll(lambda: _has(browser, 'id="live-streams"'), "the operator page")
    assert await browser.text("#live-streams") == ""
    marker = await browser.do(lambda d: d.execute_script("window.marker = 1; return window.marker"))
    await relay.call("grant", "nas-agent", 10 * MB)
    async with DigestService() as service:
        await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{service.port}", clients)
        port = _free_port()
        await local_forward(relay, agents["tech"], port, "nas:22", clients)
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x" * 1000)
        await poll(lambda: _live_text(browser, "nas-agent"), "the stream in the live table", 15)
        assert await browser.do(lambda d: d.execute_script("return window.marker")) == marker
        await browser.do(
            lambda d: d.find_element(By.ID, "grant-nas-agent").send_keys("5M", Keys.ENTER)
        )
        await poll(lambda: _has(browser, "Granted."), "the grant notice")
        writer.close()
    assert (await relay.call("agent", "nas-agent"))["granted"] == 15 * MB
    assert await browser.errors() == []  # live.js ran under the policy, fetches allowed


async def _has(browser: Browser, text: str) -> bool:
    return text in await browser.source()


async def _live_text(browser: Browser, text: str) -> bool:
    return text in await browser.text("#live-streams")


class _NoAgents:
    """A relay with no agents and no streams."""

    def grant(self, agent_id: str, nbytes: int) -> dict[str, object]:
        raise UnknownAgent(agent_id)

    def revoke(self, agent_id: str, nbytes: int) -> dict[str, object]:
        raise UnknownAgent(agent_id)

    def set_active(self, agent_id: str, active: bool) -> dict[str, object]:
        raise UnknownAgent(agent_id)

    def status(self) -> dict[str, object]:
        return {}

    def agents(self) -> list[dict[str, object]]:
        return []

    def streams(self) -> list[dict[str, object]]:
        return []


async def test_a_missing_stream_log_or_agent_is_a_clear_page(tmp_path: Path) -> None:
    """Searching a stream log that is not there answers 503 naming it; an unknown agent 404."""
    missing = tmp_path / "nowhere.sqlite3"
    server = AdminServer(_NoAgents(), LOCAL, TOKEN, stream_log=missing)
    async with server:
        operator = Visitor(f"http://127.0.0.1:{server.port}")
        try:
            await _signed_in(operator)
            page = await operator.get("/console/log", agent="nas-agent")
            assert page.status == 503 and f"stream log not found: {missing}" in page.text
            index = await operator.get("/console/")
            grant = await operator.post(
                "/console/agents/ghost/grant", {"csrf": _csrf(index.text), "bytes": "1M"}
            )
            assert grant.status == 404 and "ghost" in grant.text
        finally:
            await operator.close()


def _csrf(text: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', text)
    assert found is not None
    return found.group(1)
