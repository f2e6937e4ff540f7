"""Signing in to the console: account token, one-time links, sessions, CSRF and headers."""

from __future__ import annotations

from pathlib import Path

from quota.billing.auth import token_hash
from quota.billing.server import BillingServer
from tests.billing.api import make_config
from tests.console.client import Setup, Visitor, serving
from tests.rigs.postgres import TestDatabase


async def test_pages_without_a_session_send_the_visitor_to_sign_in(visitor: Visitor) -> None:
    """Every page redirects to the sign-in page until the visitor signs in."""
    for path in ("/console", "/console/", "/console/overview", "/console/usage", "/console/ledger",
                 "/console/ledger.csv", "/console/statement"):  # fmt: skip
        page = await visitor.get(path)
        assert page.url.endswith("/console/sign-in"), path
        assert 'id="sign-in"' in page.text


async def test_token_sign_in_sets_a_strict_http_only_session_cookie(
    setup: Setup, visitor: Visitor
) -> None:
    """The account token signs in; the cookie is HttpOnly, SameSite=Strict, path /console."""
    page = await visitor.get("/console/sign-in")
    async with visitor.session.post(
        setup.server.url + "/console/sign-in",
        data={**page.form("/console/sign-in"), "token": setup.token},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/console/overview"
        cookie = next(c for c in resp.headers.getall("Set-Cookie") if c.startswith("qr_console="))
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "samesite=strict", "path=/console"} <= flags
    overview = await visitor.get("/console/overview")
    assert overview.status == 200 and 'id="balance"' in overview.text
    assert "15.000 coin" in overview.text and "acme" in overview.text


async def test_every_answer_carries_a_strict_content_security_policy(visitor: Visitor) -> None:
    """No inline script or style, nothing from elsewhere, no framing, no referrer, no caching."""
    for path in ("/console/sign-in", "/console/static/console.css", "/console/link/nope"):
        page = await visitor.get(path)
        csp = page.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert page.headers["Referrer-Policy"] == "no-referrer"
        assert page.headers["Cache-Control"] == "no-store"


async def test_a_wrong_token_is_refused_and_counted_against_the_source(
    setup: Setup, visitor: Visitor
) -> None:
    """A wrong token answers 401; past the configured limit the source gets 429."""
    pages = [
        await visitor.sign_in("qra_not-a-token")
        for _ in range(setup.server.config.auth_failures + 1)
    ]
    assert pages[0].status == 401 and "unknown account token" in pages[0].text
    assert pages[-1].status == 429 and "too many wrong tokens" in pages[-1].text


async def test_sign_in_without_or_with_a_wrong_csrf_token_is_403(
    setup: Setup, visitor: Visitor
) -> None:
    """The sign-in form, like every form, needs its CSRF token."""
    await visitor.get("/console/sign-in")
    missing = await visitor.post("/console/sign-in", {"token": setup.token})
    wrong = await visitor.post("/console/sign-in", {"token": setup.token, "csrf": "0" * 64})
    assert (missing.status, wrong.status) == (403, 403)
    assert "security token" in missing.text
    assert (await visitor.get("/console/overview")).url.endswith("/sign-in")


async def _link(setup: Setup) -> str:
    link = await setup.api.ok("POST", f"/v1/accounts/{setup.account}/console-links")
    assert link["account_id"] == setup.account
    path: str = link["path"]
    assert path.startswith("/console/link/")
    return path


async def test_a_one_time_link_signs_in_once(setup: Setup, visitor: Visitor) -> None:
    """A link signs in; the same link again is refused, also in another browser."""
    path = await _link(setup)
    page = await visitor.get(path)
    assert page.status == 200 and "works once" in page.text  # the GET alone uses nothing
    signed = await visitor.submit(page, "/console/link")
    assert signed.status == 200 and signed.url.endswith("/console/overview")
    other = setup.visitor()
    try:
        again = await other.get(path)
        refused = await other.submit(again, "/console/link")
        assert refused.status == 403 and "already used or has expired" in refused.text
        assert (await other.get("/console/overview")).url.endswith("/sign-in")
    finally:
        await other.close()


async def test_a_link_expires_after_15_minutes(setup: Setup, visitor: Visitor) -> None:
    """A link not used within 15 minutes signs no one in."""
    path = await _link(setup)
    page = await visitor.get(path)
    setup.clock.advance(15 * 60_000)
    refused = await visitor.submit(page, "/console/link")
    assert refused.status == 403


async def test_links_and_sessions_are_stored_hashed(setup: Setup, visitor: Visitor) -> None:
    """The database holds the SHA-256 of a link's and a session's token, never the token."""
    path = await _link(setup)
    token = path.rsplit("/", 1)[1]
    await visitor.submit(await visitor.get(path), "/console/link")
    session = next(c.value for c in visitor.session.cookie_jar if c.key == "qr_console")
    async with setup.server.store.peek() as tx:
        links = [tuple(r) for r in await tx.all("SELECT * FROM console_links")]
        sessions = [tuple(r) for r in await tx.all("SELECT * FROM console_sessions")]
    assert [r[0] for r in links] == [token_hash(token)]
    assert [r[0] for r in sessions] == [token_hash(session)]
    assert token not in repr(links) and session not in repr(sessions)


async def test_an_account_token_cannot_make_a_link_for_another_account(setup: Setup) -> None:
    """The owner or the admin may make a link; another account gets 404."""
    _other, other_token = await setup.api.account("globex")
    path = f"/v1/accounts/{setup.account}/console-links"
    assert (await setup.api.call("POST", path, other_token))[0] == 404
    assert (await setup.api.call("POST", path, setup.token))[0] == 201


async def test_sign_out_ends_the_session_for_good(setup: Setup, visitor: Visitor) -> None:
    """After sign-out the old cookie opens nothing, even when sent again by hand."""
    overview = await visitor.sign_in(setup.token)
    session = next(c.value for c in visitor.session.cookie_jar if c.key == "qr_console")
    out = await visitor.submit(overview, "/console/sign-out")
    assert out.url.endswith("/console/sign-in")
    replay = Visitor(setup.server.url)
    try:
        replay.session.cookie_jar.update_cookies({"qr_console": session})
        assert (await replay.get("/console/overview")).url.endswith("/sign-in")
    finally:
        await replay.close()


async def test_a_session_ends_after_12_hours(setup: Setup, visitor: Visitor) -> None:
    """A session older than its lifetime no longer opens pages."""
    await visitor.sign_in(setup.token)
    setup.clock.advance(12 * 3_600_000)
    assert (await visitor.get("/console/overview")).url.endswith("/sign-in")


async def test_a_session_opened_on_one_replica_works_on_another(
    tmp_path: Path, postgresql_db: TestDatabase
) -> None:
    """Sessions live in the shared database: a second billing process over it knows them."""
    url = postgresql_db.fresh_url()
    async with serving(tmp_path, url) as first:
        config = make_config(tmp_path / "second", database=url)
        async with BillingServer(config, clock=first.clock, maintenance=False) as second:
            visitor = first.visitor()
            try:
                await visitor.sign_in(first.token)
                page = await visitor.session.get(second.url + "/console/overview")
                async with page:
                    assert page.status == 200 and 'id="balance"' in await page.text()
                    assert str(page.url).startswith(second.url)
            finally:
                await visitor.close()
