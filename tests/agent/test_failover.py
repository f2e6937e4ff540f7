"""A relay's billing client with several replicas: it fails over only when a replica is down."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from quota.agent.client import BillingClient
from quota.agent.errors import BillingUnavailable
from quota.billing.server import BillingServer
from relay.config import load_config
from tests.billing.api import RELAY, make_config


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # closed again: nothing answers there


def _report(seq: int) -> bytes:
    return json.dumps({"seq": seq, "items": [], "leases": []}).encode()


async def test_a_down_replica_is_skipped_and_the_live_one_kept(tmp_path: Path) -> None:
    """Unreachable first replica: the call goes to the next, which stays the first choice."""
    dead = _dead_url()
    async with (
        BillingServer(make_config(tmp_path), maintenance=False) as live,
        BillingClient([dead, live.url], RELAY, timeout_s=2) as client,
    ):
        assert (await client.sync(_report(1))).duplicate is False
        assert client.url == live.url
        assert (await client.sync(_report(1))).duplicate is True  # applied once
        assert len((await client.relay_agents()).agents) == 0


async def test_a_refusal_is_not_a_reason_to_fail_over(tmp_path: Path) -> None:
    """A 4xx from a live replica is its answer: no other replica is asked, the error is raised."""
    async with (
        BillingServer(make_config(tmp_path), maintenance=False) as live,
        BillingClient([live.url, _dead_url()], RELAY, timeout_s=2) as client,
    ):
        with pytest.raises(BillingUnavailable, match="HTTP 400"):
            await client.sync(b"not json")
        assert client.url == live.url


async def test_every_replica_down_is_billing_unavailable() -> None:
    """With no replica reachable the call fails once, naming the last one tried."""
    urls = [_dead_url(), _dead_url()]
    async with BillingClient(urls, RELAY, timeout_s=2) as client:
        with pytest.raises(BillingUnavailable, match=r"127\.0\.0\.1"):
            await client.sync(_report(1))


def test_billing_urls_add_replicas_after_url(tmp_path: Path) -> None:
    """billing.urls lists more replicas; url comes first, duplicates once; urls alone suffice."""
    path = tmp_path / "relay.toml"
    path.write_text(
        '[billing]\nurl = "http://a:1"\nurls = ["http://b:2", "http://a:1"]\ntoken = "t"\n'
    )
    link = load_config(path).billing
    assert link is not None and link.urls == ("http://a:1", "http://b:2")
    path.write_text('[billing]\nurls = ["http://b:2", "http://c:3"]\ntoken = "t"\n')
    link = load_config(path).billing
    assert link is not None and (link.url, link.urls) == (
        "http://b:2",
        ("http://b:2", "http://c:3"),
    )
    path.write_text('[billing]\nurls = ["ftp://b"]\ntoken = "t"\n')
    with pytest.raises(Exception, match=r"billing\.urls"):
        load_config(path)


async def test_an_answer_is_decoded_straight_into_its_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A well-formed answer is decoded by msgspec alone, never through json.loads."""
    calls: list[object] = []
    loads = json.loads
    async with (
        BillingServer(make_config(tmp_path), maintenance=False) as live,
        BillingClient(live.url, RELAY, timeout_s=2) as client,
    ):
        monkeypatch.setattr(json, "loads", lambda raw, **kw: calls.append(raw) or loads(raw, **kw))
        body = {"seq": 1, "items": [{"agent_id": "x", "bytes": 5}], "leases": []}
        answer = await client.sync(json.dumps(body).encode())
        assert answer.leases[0].status == "unknown" and calls == []
