"""The console's forms (POST): sign-in and out, agent settings, buying a package.

Invariants:
- Each form's CSRF token is checked before anything else (`web.form`).
- A form that changes money or settings calls the same service method as the
  API, as the signed-in account, under the idempotency key rendered into the
  form: submitting a page twice applies once, and the API's push to relays
  follows the commit exactly as it does for an API call (a bought package
  resumes a paused stream).
- A wrong account token counts against the source address like a wrong bearer
  token does: past the limit the sign-in is refused with 429 before any read.
"""

from __future__ import annotations

import re
import secrets

from aiohttp import web

from quota.billing.console.sessions import LINK_TTL_MS
from quota.billing.console.web import (
    PRE_COOKIE,
    SESSION_COOKIE,
    Refused,
    form,
    redirect,
    service_of,
    signed_in,
    start_session,
)
from quota.contract import wire
from quota.core.errors import InvalidValue
from quota.core.money import parse_coin

_FORM_KEY = re.compile(r"console-[0-9a-f]{32}", re.ASCII)


def form_key() -> str:
    """An idempotency key for one rendering of a form."""
    return "console-" + secrets.token_hex(16)


def _key(fields: dict[str, str]) -> str:
    key = fields.get("key", "")
    if _FORM_KEY.fullmatch(key) is None:
        raise Refused(400, "this form has no valid key: reload the page")
    return key


async def sign_in(request: web.Request) -> web.StreamResponse:
    """Sign in with the account's token (the one `account create` showed once)."""
    fields = await form(request, request.cookies.get(PRE_COOKIE, ""))
    service = service_of(request)
    source, now = request.remote or "", service.runner.clock.now_ms()
    wait_ms = service.auth_failures.retry_after_ms(source, now)
    if wait_ms:
        raise Refused(429, f"too many wrong tokens from {source}; retry in {-(-wait_ms // 1000)} s")
    token = fields.get("token", "").strip()
    who = await service.tokens.account(token) if 0 < len(token) <= wire.MAX_STR else None
    if who is None:
        service.auth_failures.failed(source, now)
        raise Refused(401, "unknown account token")
    return start_session(request, await service.console.sign_in(who.id))


async def redeem(request: web.Request) -> web.StreamResponse:
    """Sign in with a one-time link; a used or expired one is refused."""
    fields = await form(request, request.cookies.get(PRE_COOKIE, ""))
    session = await service_of(request).console.redeem_link(fields.get("token", ""))
    if not session:
        minutes = LINK_TTL_MS // 60_000
        raise Refused(
            403,
            f"this sign-in link was already used or has expired (links last {minutes} minutes"
            " and work once): ask for a new one",
        )
    return start_session(request, session)


async def sign_out(request: web.Request) -> web.StreamResponse:
    session = request.cookies.get(SESSION_COOKIE, "")
    await signed_in(request)
    await form(request, session)
    await service_of(request).console.sign_out(session)
    response = redirect("/sign-in")
    response.del_cookie(SESSION_COOKIE, path="/console")
    return response


def _coin_field(fields: dict[str, str], name: str, label: str) -> int | None:
    raw = fields.get(name, "").strip()
    if not raw:
        return None
    try:
        return parse_coin(raw)
    except InvalidValue as exc:
        raise Refused(400, f"{label}: {exc}") from None


async def agent_settings(request: web.Request) -> web.StreamResponse:
    """Auto-renew, the auto top-up package and its spending limit per period."""
    who = await signed_in(request)
    fields = await form(request, request.cookies.get(SESSION_COOKIE, ""))
    agent_id = request.match_info["agent_id"]
    settings = wire.AgentSettingsRequest(
        auto_renew=fields.get("auto_renew") == "on",
        topup_package=fields.get("topup_package", ""),
        topup_limit=_coin_field(fields, "topup_limit", "top-up limit"),
    )
    await service_of(request).agents.update_settings(who, _key(fields), agent_id, settings)
    return redirect(f"/overview?notice=saved#{agent_id}")


async def buy_package(request: web.Request) -> web.StreamResponse:
    who = await signed_in(request)
    fields = await form(request, request.cookies.get(SESSION_COOKIE, ""))
    agent_id = request.match_info["agent_id"]
    body = wire.BuyPackageRequest(package=fields.get("package", ""))
    await service_of(request).plans.buy_package(who, _key(fields), agent_id, body)
    return redirect(f"/overview?notice=bought#{agent_id}")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/sign-in", sign_in)
    router.add_post("/link", redeem)
    router.add_post("/sign-out", sign_out)
    router.add_post("/agents/{agent_id}/settings", agent_settings)
    router.add_post("/agents/{agent_id}/packages", buy_package)
