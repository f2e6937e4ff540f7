"""The admin API on real sockets: auth, validation, grants, unix sockets, and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from quota.core.bucket import Bucket
from relay.admin.client import AdminClient, AdminError, parse_admin_target
from relay.admin.server import AdminServer, RelayControl
from relay.config import HostPort
from relay.errors import ConfigError, UnknownAgent, UnknownStream
from tools.cli import main

TOKEN = "s3cret-token"
LOCAL = HostPort(host="127.0.0.1", port=0)


class FakeRelay:
    """An in-memory relay: real buckets, a fixed stream list."""

    def __init__(self) -> None:
        self.buckets = {"nas-agent": Bucket("nas-agent"), "cam-agent": Bucket("cam-agent")}
        cam = self.buckets["cam-agent"]
        cam.grant(5000)
        cam.take(cam.attach("stream-1"), 1200)

    def _bucket(self, agent_id: str) -> Bucket:
        try:
            return self.buckets[agent_id]
        except KeyError:
            raise UnknownAgent(agent_id) from None

    def _view(self, agent_id: str) -> dict[str, object]:
        b = self._bucket(agent_id)
        return {
            "agent_id": agent_id,
            "account": "acme",
            "role": "client",
            "state": b.state.value,
            "granted": b.granted,
            "used": b.used,
            "remaining": b.remaining,
            "streams": b.meters,
            "waiting": b.waiting,
        }

    def grant(self, agent_id: str, nbytes: int) -> dict[str, object]:
        self._bucket(agent_id).grant(nbytes)
        return self._view(agent_id)

    def revoke(self, agent_id: str, nbytes: int) -> dict[str, object]:
        self._bucket(agent_id).revoke(nbytes)
        return self._view(agent_id)

    def set_active(self, agent_id: str, active: bool) -> dict[str, object]:
        self._bucket(agent_id).set_inactive(not active)
        return self._view(agent_id)

    def agents(self) -> list[dict[str, object]]:
        return [self._view(agent_id) for agent_id in sorted(self.buckets)]

    def streams(self) -> list[dict[str, object]]:
        return [
            {
                "stream_id": "s-1",
                "tunnel_id": "t-cam",
                "agent_id": "cam-agent",
                "kind": "tcp",
                "peer": "127.0.0.1:50000",
                "target": "cam:554",
                "state": "open",
                "bytes_up": 1200,
                "bytes_down": 2_500_000,
                "pauses": 0,
            }
        ]

    def pause_stream(self, stream_id: str, paused: bool) -> dict[str, object]:
        if stream_id != "s-1":
            raise UnknownStream(stream_id)
        return {**self.streams()[0], "state": "paused" if paused else "open"}

    def status(self) -> dict[str, object]:
        return {
            "relay_id": "relay-test",
            "uptime_ms": 3_723_000,
            "tunnels": 1,
            "streams": 1,
            "sync": {"push_events": 2, "reports_acked": 10},
        }


def _control(relay: FakeRelay) -> RelayControl:
    return relay  # checks that FakeRelay satisfies the protocol


@pytest.fixture
async def relay() -> FakeRelay:
    return FakeRelay()


@pytest.fixture
async def base(relay: FakeRelay) -> AsyncIterator[str]:
    async with AdminServer(_control(relay), LOCAL, TOKEN) as server:
        yield f"http://127.0.0.1:{server.port}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    async with http.request(
        method, url, data=body, headers=AUTH if headers is None else headers
    ) as r:
        return r.status, await r.json()


# -- auth ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
    ],
)
async def test_bad_token_is_401(
    http: aiohttp.ClientSession, base: str, relay: FakeRelay, headers: dict[str, str]
) -> None:
    """A missing, wrong or non-bearer token gets 401 and grants nothing."""
    status, body = await _call(
        http, "POST", f"{base}/v1/agents/nas-agent/grant", b'{"bytes": 5}', headers
    )
    assert status == 401
    assert "admin token" in body["error"]
    assert relay.buckets["nas-agent"].granted == 0


async def test_right_token_is_200(http: aiohttp.ClientSession, base: str) -> None:
    """The configured bearer token is accepted."""
    status, body = await _call(http, "GET", f"{base}/v1/status")
    assert (status, body["relay_id"]) == (200, "relay-test")


async def test_unknown_path_needs_auth_first(http: aiohttp.ClientSession, base: str) -> None:
    """Without a token even an unknown path answers 401, so nothing leaks."""
    assert (await _call(http, "GET", f"{base}/v1/nothing", headers={}))[0] == 401
    status, body = await _call(http, "GET", f"{base}/v1/nothing")
    assert status == 404 and "no such endpoint" in body["error"]


async def test_empty_token_refused_over_tcp(relay: FakeRelay) -> None:
    """An empty token on a TCP address refuses to start."""
    with pytest.raises(ConfigError, match=r"admin\.token is required"):
        async with AdminServer(relay, LOCAL, ""):
            pass


# -- reads and round trips -----------------------------------------------------------


async def test_reads(http: aiohttp.ClientSession, base: str) -> None:
    """Agents, one agent and streams are listed as the relay reports them."""
    status, agents = await _call(http, "GET", f"{base}/v1/agents")
    assert status == 200
    assert [a["agent_id"] for a in agents["agents"]] == ["cam-agent", "nas-agent"]
    status, cam = await _call(http, "GET", f"{base}/v1/agents/cam-agent")
    assert (status, cam["used"], cam["remaining"], cam["streams"]) == (200, 1200, 3800, 1)
    status, streams = await _call(http, "GET", f"{base}/v1/streams")
    assert streams["streams"][0]["stream_id"] == "s-1"


async def test_grant_revoke_state_round_trip(base: str, relay: FakeRelay) -> None:
    """Grant, revoke and state changes reach the bucket and come back as the agent's view."""
    async with AdminClient(
        HostPort(host="127.0.0.1", port=int(base.rsplit(":", 1)[1])), TOKEN
    ) as c:
        assert (await c.grant("nas-agent", "10M"))["remaining"] == 10_000_000
        assert (await c.grant("nas-agent", 500))["granted"] == 10_000_500
        assert (await c.revoke("nas-agent", 10_000_000))["remaining"] == 500
        assert (await c.revoke("cam-agent", "1G"))["granted"] == 1200  # only unused bytes
        assert (await c.set_active("nas-agent", False))["state"] == "inactive"
        assert relay.buckets["nas-agent"].inactive
        assert (await c.set_active("nas-agent", True))["state"] == "active"
        assert (await c.agent("nas-agent"))["granted"] == 500


async def test_unknown_agent_is_404(http: aiohttp.ClientSession, base: str) -> None:
    """Every per-agent endpoint answers 404 naming an unknown agent."""
    for method, path, body in [
        ("GET", "", None),
        ("POST", "/grant", b'{"bytes": 1}'),
        ("POST", "/revoke", b'{"bytes": 1}'),
        ("POST", "/state", b'{"active": true}'),
    ]:
        status, answer = await _call(http, method, f"{base}/v1/agents/ghost{path}", body)
        assert (status, answer["error"]) == (404, "unknown agent 'ghost'")


# -- bad input -----------------------------------------------------------------------

BAD_BYTES = [
    (b"{not json", "not valid JSON"),
    (b"", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"bytes": 5, "extra": 1}', "unknown field 'extra'"),
    (b"{}", 'missing field "bytes"'),
    (b'{"bytes": true}', "not a boolean"),
    (b'{"bytes": null}', "not NoneType"),
    (b'{"bytes": 1.5}', "not float"),
    (b'{"bytes": -1}', "must not be negative"),
    (b'{"bytes": "-1"}', "not a size"),
    (f'{{"bytes": {2**62 + 1}}}'.encode(), "at most 2**62"),
    (b'{"bytes": "5000000T"}', "out of range"),
    (b'{"bytes": "10X"}', "not a size: '10X'"),
]


@pytest.mark.parametrize("action", ["grant", "revoke"])
@pytest.mark.parametrize(("body", "message"), BAD_BYTES)
async def test_bad_bytes_is_400(
    http: aiohttp.ClientSession, base: str, relay: FakeRelay, action: str, body: bytes, message: str
) -> None:
    """A malformed grant or revoke answers 400 naming the problem, and changes nothing."""
    before = relay.agents()
    status, answer = await _call(http, "POST", f"{base}/v1/agents/cam-agent/{action}", body)
    assert status == 400
    assert message in answer["error"]
    assert relay.agents() == before


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{}", 'missing field "active"'),
        (b'{"active": "yes"}', "must be true or false"),
        (b'{"active": 1}', "must be true or false"),
        (b'{"active": true, "bytes": 1}', "unknown field 'bytes'"),
    ],
)
async def test_bad_state_is_400(
    http: aiohttp.ClientSession, base: str, relay: FakeRelay, body: bytes, message: str
) -> None:
    """A malformed state change answers 400 naming the problem, and changes nothing."""
    status, answer = await _call(http, "POST", f"{base}/v1/agents/cam-agent/state", body)
    assert status == 400 and message in answer["error"]
    assert not relay.buckets["cam-agent"].inactive


async def test_an_operator_pauses_and_resumes_a_live_stream(
    http: aiohttp.ClientSession, base: str
) -> None:
    """POST /v1/streams/{id}/pause takes true or false; an unknown stream is 404."""
    url = f"{base}/v1/streams/s-1/pause"
    status, answer = await _call(http, "POST", url, b'{"paused": true}')
    assert (status, answer["state"]) == (200, "paused")
    for body, message in [
        (b"{}", "must be true or false, got None"),
        (b'{"paused": "yes"}', "must be true or false"),
        (b'{"paused": true, "x": 1}', "unknown field 'x'"),
    ]:
        status, answer = await _call(http, "POST", url, body)
        assert status == 400 and message in answer["error"]
    status, answer = await _call(http, "POST", f"{base}/v1/streams/gone/pause", b'{"paused": 1}')
    assert status == 400  # the body is checked first
    status, answer = await _call(
        http, "POST", f"{base}/v1/streams/gone/pause", b'{"paused": false}'
    )
    assert (status, answer["error"]) == (404, "no live stream 'gone'")


async def test_large_body_is_413(http: aiohttp.ClientSession, base: str, relay: FakeRelay) -> None:
    """A body over 64 KiB answers 413, with or without a Content-Length."""
    body = b'{"bytes": 5, "pad": "' + b"x" * 65536 + b'"}'

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    for data in (body, chunks()):
        async with http.post(f"{base}/v1/agents/nas-agent/grant", data=data, headers=AUTH) as r:
            assert r.status == 413
            assert "larger than 65536 bytes" in (await r.json())["error"]
    assert relay.buckets["nas-agent"].granted == 0


async def test_wrong_method_is_405(http: aiohttp.ClientSession, base: str) -> None:
    """GET on a POST endpoint answers 405 naming the method to use."""
    status, answer = await _call(http, "GET", f"{base}/v1/agents/nas-agent/grant")
    assert status == 405 and "use POST" in answer["error"]


async def test_requests_are_logged(http: aiohttp.ClientSession, base: str) -> None:
    """Each request is logged once as admin_request with method, path and status."""
    with capture_logs() as logs:
        await _call(http, "GET", f"{base}/v1/agents/ghost")
    assert logs == [
        {
            "event": "admin_request",
            "log_level": "info",
            "method": "GET",
            "path": "/v1/agents/ghost",
            "status": 404,
        }
    ]


# -- unix socket ---------------------------------------------------------------------


async def test_unix_socket(tmp_path: Path, relay: FakeRelay) -> None:
    """A unix socket is created 0600, replaces a stale file, serves, and is removed on exit."""
    path = tmp_path / "admin.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a relay that died
    async with AdminServer(relay, path, TOKEN):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert os.listdir(tmp_path) == ["admin.sock"]  # the private staging folder is gone
        async with AdminClient(path, TOKEN) as client:
            assert (await client.grant("nas-agent", "1K"))["granted"] == 1000
        async with AdminClient(path, "wrong") as client:
            with pytest.raises(AdminError, match="admin token") as info:
                await client.status()
            assert info.value.status == 401
    assert not path.exists()


async def test_unix_socket_without_token(tmp_path: Path, relay: FakeRelay) -> None:
    """On a unix socket an empty token is allowed: file permissions guard it."""
    path = tmp_path / "admin.sock"
    async with AdminServer(relay, path, ""), AdminClient(path, "") as client:
        assert (await client.status())["relay_id"] == "relay-test"


async def test_unix_socket_refuses_live_or_regular_file(tmp_path: Path, relay: FakeRelay) -> None:
    """A socket in use or a regular file at the path is never removed."""
    path = tmp_path / "admin.sock"
    async with AdminServer(relay, path, TOKEN):
        with pytest.raises(ConfigError, match="another process already listens"):
            async with AdminServer(relay, path, TOKEN):
                pass
        async with AdminClient(path, TOKEN) as client:  # still serving; the probe is handled
            assert (await client.status())["relay_id"] == "relay-test"
    path.write_text("keep me")
    with pytest.raises(ConfigError, match="exists and is not a socket"):
        async with AdminServer(relay, path, TOKEN):
            pass
    assert path.read_text() == "keep me"


# -- client errors -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_client_when_nothing_listens(tmp_path: Path) -> None:
    """With no relay, the client says it cannot reach the admin API at that address."""
    port = _free_port()
    async with AdminClient(HostPort(host="127.0.0.1", port=port), TOKEN) as client:
        with pytest.raises(AdminError, match=rf"at http://127.0.0.1:{port}: is the relay running"):
            await client.agents()
    async with AdminClient(tmp_path / "none.sock", TOKEN) as client:
        with pytest.raises(AdminError, match=r"cannot reach .* at unix:.*none\.sock"):
            await client.status()


def test_parse_admin_target() -> None:
    """--admin takes http://HOST:PORT, HOST:PORT or unix:PATH, and names a bad one."""
    assert parse_admin_target("http://127.0.0.1:8022") == HostPort(host="127.0.0.1", port=8022)
    assert parse_admin_target("localhost:9") == HostPort(host="localhost", port=9)
    assert parse_admin_target("unix:/run/q.sock") == Path("/run/q.sock")
    for bad in ("https://h:1", "http://h:1/x", "h", "unix:"):
        with pytest.raises(AdminError, match="--admin"):
            parse_admin_target(bad)


# -- the CLI, against a server in a background thread ---------------------------------


@contextlib.contextmanager
def serve_in_thread(relay: FakeRelay, listen: HostPort | Path, token: str) -> Iterator[str]:
    """Run an AdminServer on its own loop in a thread; yields the --admin argument."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def run() -> None:
        async with AdminServer(relay, listen, token) as server:
            box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.Event()
            box["admin"] = (
                f"unix:{listen}" if isinstance(listen, Path) else f"127.0.0.1:{server.port}"
            )
            ready.set()
            await box["stop"].wait()

    def target() -> None:
        try:
            asyncio.run(run())
        finally:
            ready.set()

    thread = threading.Thread(target=target, name="admin-server")
    thread.start()
    assert ready.wait(5) and "admin" in box, "admin server did not start"
    try:
        yield box["admin"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(5)
        assert not thread.is_alive()


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeRelay, str]]:
    monkeypatch.delenv("QUOTARELAY_ADMIN_TOKEN", raising=False)
    relay = FakeRelay()
    with capture_logs(), serve_in_thread(relay, LOCAL, TOKEN) as admin:
        yield relay, admin


def test_cli_grant_and_agents(
    cli: tuple[FakeRelay, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`relay grant` prints the new remaining bytes; `relay agents` shows a readable table."""
    relay, admin = cli
    auth = ["--admin", f"http://{admin}", "--token", TOKEN]
    assert main(["relay", "grant", "nas-agent", "10M", *auth]) == 0
    out = capsys.readouterr().out
    assert out == "granted 10M to nas-agent: 10000000 (10M) bytes remaining, state active\n"
    assert relay.buckets["nas-agent"].granted == 10_000_000
    assert main(["relay", "agents", *auth]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        *("AGENT", "ACCOUNT", "ROLE", "STATE", "GRANTED", "USED", "REMAINING", "STREAMS"),
        "WAITING",
    ]
    assert "10000000 (10M)" in lines[2] and "5000 (5K)" in lines[1]
    assert {line.index("active") for line in lines[1:]} == {lines[0].index("STATE")}


def test_cli_token_from_env(
    cli: tuple[FakeRelay, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """QUOTARELAY_ADMIN_TOKEN supplies the token; revoke, deactivate and activate work."""
    relay, admin = cli
    monkeypatch.setenv("QUOTARELAY_ADMIN_TOKEN", TOKEN)
    relay.buckets["nas-agent"].grant(3000)
    assert main(["relay", "revoke", "nas-agent", "1K", "--admin", admin]) == 0
    assert capsys.readouterr().out.startswith(
        "revoked up to 1K from nas-agent: 2000 (2K) bytes remaining"
    )
    assert main(["relay", "deactivate", "nas-agent", "--admin", admin]) == 0
    assert "state inactive" in capsys.readouterr().out
    assert relay.buckets["nas-agent"].inactive
    assert main(["relay", "activate", "nas-agent", "--admin", admin]) == 0
    assert "state active" in capsys.readouterr().out


def test_cli_from_config_file(
    cli: tuple[FakeRelay, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Without --admin, address and token come from relay.toml in the working folder."""
    _, admin = cli
    (tmp_path / "relay.toml").write_text(f'[admin]\nlisten = "{admin}"\ntoken = "{TOKEN}"\n')
    monkeypatch.chdir(tmp_path)
    assert main(["relay", "status"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:2] == ["relay id: relay-test", "uptime:   1h02m"]
    assert "sync:\n  push events:   2\n  reports acked: 10\n" in out and "{" not in out
    assert main(["relay", "streams", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["bytes_down"] == 2_500_000
    assert main(["relay", "streams"]) == 0
    assert "2500000 (2.5M)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["grant", "nas-agent", "10X"], "not a size: '10X'"),
        (["grant", "ghost", "1M"], "unknown agent 'ghost'"),
        (["agents", "--token", "wrong"], "missing or wrong admin token"),
        (["activate", "nas-agent", "--admin", "http://127.0.0.1:1"], "is the relay running?"),
        (["agents", "--admin", "ftp://x:1"], "--admin: expected"),
        (["agents", "--config", "missing.toml"], "config file not found: missing.toml"),
        (["run", "--config", "missing.toml"], "config file not found: missing.toml"),
    ],
)
def test_cli_errors(
    cli: tuple[FakeRelay, str], capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    """User mistakes exit 2 with one line naming the problem, and change nothing."""
    relay, admin = cli
    before = relay.agents()
    extra = [] if "--admin" in args or "--config" in args else ["--admin", admin]
    extra += [] if "--token" in args or "--config" in args else ["--token", TOKEN]
    assert main(["relay", *args, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("quotarelay: ") and message in err and err.count("\n") == 1
    assert relay.agents() == before


def test_cli_over_unix_socket(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI reaches a unix-socket admin API with --admin unix:PATH and --json."""
    relay = FakeRelay()
    with capture_logs(), serve_in_thread(relay, tmp_path / "a.sock", "") as admin:
        assert main(["relay", "grant", "cam-agent", "1Ki", "--admin", admin, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["granted"] == 5000 + 1024


# -- failure paths of the server itself -------------------------------------------------


class BrokenRelay(FakeRelay):
    def status(self) -> dict[str, object]:
        raise RuntimeError("boom")


async def test_relay_bug_is_500_and_logged(http: aiohttp.ClientSession) -> None:
    """An unexpected error in the relay answers a JSON 500 and is logged, not leaked."""
    async with AdminServer(BrokenRelay(), LOCAL, TOKEN) as server:
        with capture_logs() as logs:
            status, body = await _call(http, "GET", f"http://127.0.0.1:{server.port}/v1/status")
    assert status == 500 and "internal error" in body["error"] and "boom" not in body["error"]
    assert [entry["event"] for entry in logs] == ["admin_error", "admin_request"]


async def test_close_completes_when_cancelled(tmp_path: Path, relay: FakeRelay) -> None:
    """Cancelling close() still stops the listener and removes the socket file."""
    path = tmp_path / "admin.sock"
    server = AdminServer(relay, path, TOKEN)
    await server.start()
    task = asyncio.create_task(server.close())
    asyncio.get_running_loop().call_soon(task.cancel)  # lands while close() awaits cleanup
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not path.exists()
    async with AdminClient(path, TOKEN) as client:
        with pytest.raises(AdminError, match="is the relay running"):
            await client.status()


async def test_busy_tcp_port_is_config_error(relay: FakeRelay) -> None:
    """A TCP address already in use fails to start with an error naming admin.listen."""
    async with AdminServer(relay, LOCAL, TOKEN) as first:
        taken = HostPort(host="127.0.0.1", port=first.port or 0)
        with pytest.raises(ConfigError, match=r"admin\.listen: cannot listen on 127\.0\.0\.1"):
            async with AdminServer(relay, taken, TOKEN):
                pass
