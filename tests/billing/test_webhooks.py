"""Webhooks: signed over timestamp and body, kept in the outbox until delivered, in order, once.

A real aiohttp receiver takes the deliveries of a real billing server (SQLite
and PostgreSQL); the SIGKILL test runs `quotarelay billing serve` as a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from quota.billing.clock import ManualClock
from quota.billing.server import BillingServer
from quota.billing.webhooks import EVENT_HEADER, SIGNATURE_HEADER, SignatureError, sign, verify
from tests.billing.api import WEBHOOK_SECRET, Api, make_config
from tests.rigs.billing import Billing
from tests.rigs.waits import poll

ROOT = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receiver:
    """A webhook endpoint on a fixed port that keeps each raw body and its headers."""

    def __init__(self, port: int, status: int = 204) -> None:
        self.port = port
        self.status = status
        self.url = f"http://127.0.0.1:{port}/hook"
        self.got: list[tuple[bytes, dict[str, str]]] = []
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append((await request.read(), dict(request.headers)))
        return web.Response(status=self.status)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def ids(self) -> list[str]:
        return [json.loads(body)["id"] for body, _ in self.got]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = await Receiver(free_port()).start()
    yield hook
    await hook.stop()


@contextlib.asynccontextmanager
async def served(
    tmp_path: Path, clock: ManualClock, url: str, database: str = ""
) -> AsyncIterator[tuple[BillingServer, Api]]:
    """A billing server posting its notices to `url`, and a client of it."""
    db = {"database": database} if database else {}
    config = make_config(tmp_path, webhook=url, **db)
    async with (
        BillingServer(config, clock=clock, maintenance=False) as srv,
        aiohttp.ClientSession() as session,
    ):
        yield srv, Api(session, srv.url)


async def _review(api: Api, acc: str, token: str, n: int) -> None:
    """A deposit below its intent's amount: a `deposit_review` notice."""
    intent = await api.ok("POST", f"/v1/accounts/{acc}/deposit-intents", token, {"amount": 20_000})
    body = {"account_id": acc, "payment_id": f"pay-{n}", "amount": 5_000, "intent_id": intent["id"]}
    assert (await api.ok("POST", "/v1/deposits", body=body))["status"] == "review"


async def _deliveries(api: Api, acc: str, token: str, **params: str) -> Any:
    return await api.ok("GET", f"/v1/accounts/{acc}/webhooks", token, params=params or None)


async def test_a_delivery_is_signed_over_its_exact_body_and_listed_as_delivered(
    tmp_path: Path, clock: ManualClock, database: str, receiver: Receiver
) -> None:
    """The signature verifies with the secret; the deliveries API shows it delivered once."""
    async with served(tmp_path, clock, receiver.url, database) as (_srv, api):
        acc, token = await api.account()
        await _review(api, acc, token, 1)
        await poll(lambda: len(receiver.got) == 1, "one delivery")
        body, headers = receiver.got[0]
        t = verify(WEBHOOK_SECRET, body, headers[SIGNATURE_HEADER], now_s=int(time.time()))
        assert abs(t - time.time()) < 60
        notice = json.loads(body)
        assert notice["kind"] == "deposit_review" and notice["account_id"] == acc
        assert (notice["amount"], notice["expected"]) == (5_000, 20_000)
        assert notice["at"] == clock.now_ms()
        assert headers[EVENT_HEADER] == notice["id"]
        assert headers["Content-Type"] == "application/json"

        async def delivered() -> bool:
            page = await _deliveries(api, acc, token)
            return bool(page["deliveries"][0]["state"] == "delivered")

        await poll(delivered, "the outbox to mark it delivered")
        (row,) = (await _deliveries(api, acc, token))["deliveries"]
        assert row["id"] == notice["id"] and row["attempts"] == 1
        assert row["next_attempt_at"] is None and row["last_error"] is None
        assert row["delivered_at"] >= t * 1000
        other, other_token = await api.account("other")
        status, _ = await api.call("GET", f"/v1/accounts/{acc}/webhooks", other_token)
        assert status == 404
        assert (await _deliveries(api, other, other_token))["deliveries"] == []
    assert len(receiver.got) == 1


def test_a_tampered_body_a_wrong_secret_or_a_bad_header_fail() -> None:
    """One changed byte, another secret, a missing part or a foreign scheme: SignatureError."""
    body = b'{"account_id": "acc_1", "amount": 5000, "kind": "deposit_review"}'
    now = 1_796_185_650
    header = sign(WEBHOOK_SECRET, body, now)
    assert verify(WEBHOOK_SECRET, body, header, now_s=now) == now
    with pytest.raises(SignatureError, match="does not match"):
        verify(WEBHOOK_SECRET, body.replace(b"5000", b"9000"), header, now_s=now)
    with pytest.raises(SignatureError, match="does not match"):
        verify("another-secret-0123456789", body, header, now_s=now)
    with pytest.raises(SignatureError, match="does not match"):  # t is signed too
        verify(WEBHOOK_SECRET, body, header.replace(f"t={now}", f"t={now + 1}"), now_s=now)
    for bad in ("", f"t={now}", header.split(",")[1], f"t=x,{header.split(',')[1]}"):
        with pytest.raises(SignatureError, match="malformed"):
            verify(WEBHOOK_SECRET, body, bad, now_s=now)
    rotated = f"{header},v1={'0' * 64}"  # several v1 values: one matching is enough
    assert verify(WEBHOOK_SECRET, body, rotated, now_s=now) == now


def test_replay_window_refuses_an_old_or_future_timestamp() -> None:
    """A correctly signed request is refused once its t is more than the tolerance away."""
    body, t = b'{"id": "evt_1"}', 1_796_185_650
    header = sign(WEBHOOK_SECRET, body, t)
    assert verify(WEBHOOK_SECRET, body, header, now_s=t + 300) == t
    assert verify(WEBHOOK_SECRET, body, header, now_s=t - 300) == t
    for now in (t + 301, t - 301, t + 86_400):
        with pytest.raises(SignatureError, match="outside the 300 s window"):
            verify(WEBHOOK_SECRET, body, header, now_s=now)
    assert verify(WEBHOOK_SECRET, body, header, now_s=t + 500, tolerance_s=600) == t


def _docs_verifier() -> Any:
    """The verification snippet of docs/billing.md, run as the docs print it."""
    text = (ROOT / "docs" / "billing.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (code,) = [b for b in blocks if "def verify_webhook" in b]
    scope: dict[str, Any] = {}
    exec(compile(code, "docs/billing.md", "exec"), scope)
    return scope["verify_webhook"]


async def test_the_docs_snippet_verifies_a_real_delivery_and_refuses_tampering(
    tmp_path: Path, clock: ManualClock, receiver: Receiver
) -> None:
    """The Python of docs/billing.md accepts a real delivery, refuses a tampered or old one."""
    verify_webhook = _docs_verifier()
    async with served(tmp_path, clock, receiver.url) as (_srv, api):
        acc, token = await api.account()
        await _review(api, acc, token, 1)
        await poll(lambda: len(receiver.got) == 1, "one delivery")
    body, headers = receiver.got[0]
    header = headers[SIGNATURE_HEADER]
    verify_webhook(WEBHOOK_SECRET, body, header)
    with pytest.raises(ValueError, match="does not match"):
        verify_webhook(WEBHOOK_SECRET, body + b" ", header)
    with pytest.raises(ValueError, match="does not match"):
        verify_webhook("wrong-secret-0123456789", body, header)
    with pytest.raises(ValueError, match="malformed"):
        verify_webhook(WEBHOOK_SECRET, body, "v1=abc")
    old = sign(WEBHOOK_SECRET, body, int(time.time()) - 301)
    with pytest.raises(ValueError, match="replay"):
        verify_webhook(WEBHOOK_SECRET, body, old)


async def test_receiver_down_then_up_gets_each_notice_once_in_order(
    tmp_path: Path, clock: ManualClock, database: str
) -> None:
    """Notices wait while the receiver is down (pending, attempts counted), then come once each."""
    hook = Receiver(free_port())
    async with served(tmp_path, clock, hook.url, database) as (srv, api):
        srv.notifier.backoff_first_ms, srv.notifier.backoff_max_ms = 10, 100
        srv.notifier.retries = 100  # it must still be pending when the receiver comes up
        acc, token = await api.account()
        for n in range(3):
            await _review(api, acc, token, n)

        async def retried() -> bool:
            rows = (await _deliveries(api, acc, token))["deliveries"]
            return rows[0]["attempts"] >= 3

        await poll(retried, "three failed attempts of the first notice")
        rows = (await _deliveries(api, acc, token, limit="2"))["deliveries"]
        assert [r["state"] for r in rows] == ["pending", "pending"]
        assert "unreachable" in rows[0]["last_error"]
        assert rows[0]["next_attempt_at"] is not None
        assert rows[1]["attempts"] == 0  # in order: the second waits for the first
        await srv.metrics.collector.refresh()  # what a scrape reads: the outbox itself
        assert srv.metrics.collector.webhooks_pending == 3
        await hook.start()
        try:
            await poll(lambda: len(hook.got) == 3, "three deliveries")

            async def all_delivered() -> bool:
                rows = (await _deliveries(api, acc, token))["deliveries"]
                return all(r["state"] == "delivered" for r in rows)

            await poll(all_delivered, "all three marked delivered")
            page = await _deliveries(api, acc, token)
            assert hook.ids() == [r["id"] for r in page["deliveries"]]
            assert len(set(hook.ids())) == 3
        finally:
            await hook.stop()


async def test_a_notice_refused_past_its_retries_is_kept_as_failed_and_the_next_goes_on(
    tmp_path: Path, clock: ManualClock, receiver: Receiver
) -> None:
    """retries = 3: four 500s mark it failed (kept, with the error); the next goes on; redeliver."""
    receiver.status = 500
    async with served(tmp_path, clock, receiver.url) as (srv, api):
        srv.notifier.backoff_first_ms = 10
        acc, token = await api.account()
        await _review(api, acc, token, 1)
        await poll(lambda: len(receiver.got) == 4, "four attempts")

        async def failed() -> bool:
            return bool((await _deliveries(api, acc, token))["deliveries"][0]["state"] == "failed")

        await poll(failed, "the notice marked failed")
        receiver.status = 204
        await _review(api, acc, token, 2)
        await poll(lambda: len(receiver.got) == 5, "the next notice")
        rows = (await _deliveries(api, acc, token))["deliveries"]
        assert (rows[0]["attempts"], rows[0]["last_error"]) == (4, "webhook answered 500")
        assert rows[0]["next_attempt_at"] is None and rows[0]["delivered_at"] is None
        assert len(receiver.got) == 5  # the failed one is not sent again on its own
        first = rows[0]["id"]
        redeliver = f"/v1/accounts/{acc}/webhooks/{first}/redeliver"
        status, _ = await api.call("POST", redeliver, token)
        assert status == 403  # the operator decides what goes to the operator's endpoint
        again = await api.ok("POST", redeliver)
        assert (again["state"], again["attempts"]) == ("pending", 0)
        await poll(lambda: len(receiver.got) == 6, "the redelivered notice")
        assert receiver.ids()[-1] == first
        assert receiver.got[-1][0] == receiver.got[0][0]  # the same body as at first

        async def delivered() -> bool:
            return bool(
                (await _deliveries(api, acc, token))["deliveries"][0]["state"] == "delivered"
            )

        await poll(delivered, "the redelivered notice marked delivered")
        status, body = await api.call("POST", redeliver)
        assert status == 409 and "delivered already" in body["error"]
        status, _ = await api.call("POST", f"/v1/accounts/{acc}/webhooks/evt_none/redeliver")
        assert status == 404


async def test_without_a_webhook_notices_are_kept_with_state_none(api: Api) -> None:
    """No webhook configured: the notice is listed with state none; redelivery is 409."""
    acc, token = await api.account()
    await _review(api, acc, token, 1)
    (row,) = (await _deliveries(api, acc, token))["deliveries"]
    assert (row["kind"], row["state"], row["attempts"]) == ("deposit_review", "none", 0)
    status, body = await api.call("POST", f"/v1/accounts/{acc}/webhooks/{row['id']}/redeliver")
    assert status == 409 and "notifications.webhook_url" in body["error"]
    status, body = await api.call(
        "GET", f"/v1/accounts/{acc}/webhooks", token, params={"cursor": "1"}
    )
    assert status == 400 and "cursor" in body["error"]


async def test_pages_follow_next_cursor(api: Api) -> None:
    """Five notices in pages of two: every one once, oldest first."""
    acc, token = await api.account()
    for n in range(5):
        await _review(api, acc, token, n)
    seen, after = [], "0"
    while True:
        page = await _deliveries(api, acc, token, limit="2", after=after)
        seen += [r["id"] for r in page["deliveries"]]
        if page["next_cursor"] is None:
            break
        after = str(page["next_cursor"])
    assert len(seen) == 5 == len(set(seen))


async def test_billing_sigkilled_with_pending_notices_delivers_them_after_restart(
    tmp_path: Path,
) -> None:
    """`billing serve` SIGKILLed while its receiver is down delivers each notice once on restart."""
    hook = Receiver(free_port())
    extra = (
        f'[notifications]\nwebhook_url = "{hook.url}"\n'
        f'webhook_secret = "{WEBHOOK_SECRET}"\nbackoff_max = "1s"\n'
    )
    billing = await Billing(tmp_path, extra_toml=extra).start()
    try:
        acc = await billing.account("acme", 0)
        for n in range(2):
            intent = await billing.api(
                "POST", f"/v1/accounts/{acc}/deposit-intents", {"amount": 20_000}
            )
            body = {
                "account_id": acc,
                "payment_id": f"p{n}",
                "amount": 1,
                "intent_id": intent["id"],
            }
            await billing.api("POST", "/v1/deposits", body)

        async def attempted() -> bool:
            rows = (await billing.api("GET", f"/v1/accounts/{acc}/webhooks"))["deliveries"]
            return bool(rows[0]["attempts"] >= 1)

        await poll(attempted, "a failed attempt before the kill")
        await billing.stop(signal.SIGKILL)
        await hook.start()
        await billing.start()  # same folder, same database
        await poll(lambda: len(hook.got) == 2, "both notices after the restart", timeout=30)
        rows = (await billing.api("GET", f"/v1/accounts/{acc}/webhooks"))["deliveries"]
        assert hook.ids() == [r["id"] for r in rows]
        for body_bytes, headers in hook.got:
            verify(WEBHOOK_SECRET, body_bytes, headers[SIGNATURE_HEADER], now_s=int(time.time()))
    finally:
        await billing.close()
        await hook.stop()
    assert len(hook.got) == 2


async def test_two_replicas_on_one_database_deliver_each_notice_once(
    tmp_path: Path, clock: ManualClock, database: str, receiver: Receiver
) -> None:
    """Two billing processes share the outbox: every notice reaches the receiver exactly once."""
    other = make_config(tmp_path, webhook=receiver.url, database=database)
    async with (
        served(tmp_path, clock, receiver.url, database) as (srv, api),
        BillingServer(other, clock=clock, maintenance=False) as second,
    ):
        for notifier in (srv.notifier, second.notifier):
            notifier.backoff_first_ms = 10
        acc, token = await api.account()
        for n in range(6):
            await _review(api, acc, token, n)
            second.notifier.wake()  # the other replica looks at once too, not at its next poll

        async def all_delivered() -> bool:
            rows = (await _deliveries(api, acc, token))["deliveries"]
            return all(r["state"] == "delivered" for r in rows)

        await poll(all_delivered, "six notices delivered", timeout=30)
        rows = (await _deliveries(api, acc, token))["deliveries"]
        assert sorted(receiver.ids()) == sorted(r["id"] for r in rows)
        assert len(receiver.ids()) == 6 and all(r["attempts"] == 1 for r in rows)
        await srv.metrics.collector.refresh()
        assert srv.metrics.collector.webhooks_pending == 0


async def test_a_slow_receiver_times_out_and_a_redirect_is_not_followed(
    tmp_path: Path, clock: ManualClock
) -> None:
    """Attempt 1 outlasts the 2 s timeout, attempt 2 is a 302: both fail; attempt 3 delivers."""
    answers: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        answers.append(await request.text())
        if len(answers) == 1:
            await asyncio.sleep(3)  # past notifications.timeout (2s in these tests)
        if len(answers) <= 2:
            raise web.HTTPFound("http://127.0.0.1:9/elsewhere")
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        url = f"http://127.0.0.1:{port}/hook"
        with capture_logs() as logs:
            async with served(tmp_path, clock, url) as (srv, api):
                srv.notifier.backoff_first_ms = 10
                acc, token = await api.account()
                await _review(api, acc, token, 1)

                async def delivered() -> bool:
                    (row,) = (await _deliveries(api, acc, token))["deliveries"]
                    return bool(row["state"] == "delivered")

                await poll(delivered, "delivery on the third attempt", timeout=30)
                (row,) = (await _deliveries(api, acc, token))["deliveries"]
                assert row["attempts"] == 3 and len(answers) == 3
                assert len(set(answers)) == 1  # the same body each time
        retries = [e for e in logs if e["event"] == "billing_notice_retry"]
        assert [e["attempt"] for e in retries] == [0, 1]
        assert "Timeout" in retries[0]["error"]
        assert retries[1]["error"] == "webhook answered 302"
    finally:
        await runner.cleanup()
