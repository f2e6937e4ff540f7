"""The console's aiohttp sub-application: templates, security headers, sessions and CSRF.

Invariants:
- Every answer carries a strict Content-Security-Policy (no inline script or
  style, nothing from another origin), `no-store`, `no-referrer` (a one-time
  link never leaks through a Referer) and refuses framing.
- Templates autoescape everything; nothing is marked safe.
- The session cookie is HttpOnly, SameSite=Strict, limited to /console, and
  Secure when the request came over TLS. A page that needs a session sends a
  visitor without one to the sign-in page.
- Every POST carries a CSRF token bound to the session (or, before sign-in, to
  the pre-session cookie); a missing or wrong token is answered 403 before any
  form field is used.
- A failure of the service is a page with its status and message, never a
  traceback; an unexpected one is logged and answered 500.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import structlog
from aiohttp import web

from quota.billing.auth import Principal
from quota.billing.console.sessions import SESSION_TTL_MS
from quota.billing.errors import BillingError
from quota.billing.service import BillingService
from quota.core.errors import InvalidValue
from quota.webpages import SECURITY_HEADERS, csrf_ok, csrf_token, new_token, set_cookie

log = structlog.get_logger("quota.billing.console")

HERE = Path(__file__).parent
PREFIX = "/console"
SESSION_COOKIE = "qr_console"
PRE_COOKIE = "qr_pre"
# The pages in the navigation bar, in order: (path under /console, label).
# Webhook deliveries are to be listed on a page of their own, added here.
NAV = (
    ("/overview", "Overview"),
    ("/usage", "Usage"),
    ("/ledger", "Ledger"),
    ("/statement", "Statement"),
)

SERVICE: web.AppKey[BillingService] = web.AppKey("console_service", BillingService)
# The secret this request's forms are bound to: its session, or the pre-session cookie.
CSRF_SECRET: web.RequestKey[str] = web.RequestKey("console_csrf_secret", str)
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Refused(Exception):
    """A console request refused with a status and a message for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def service_of(request: web.Request) -> BillingService:
    return request.app[SERVICE]


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": PREFIX + location})


def render(
    request: web.Request, template: str, context: dict[str, Any], status: int = 200
) -> web.Response:
    secret = request.get(CSRF_SECRET, "")
    base = {"csrf": csrf_token(secret) if secret else "", "nav": NAV, "prefix": PREFIX}
    return aiohttp_jinja2.render_template(template, request, {**base, **context}, status=status)


async def signed_in(request: web.Request) -> Principal:
    """The account of the request's session; raises a redirect to sign-in without one."""
    session = request.cookies.get(SESSION_COOKIE, "")
    who = await service_of(request).console.principal(session)
    if who is None:
        raise _SignInFirst
    request[CSRF_SECRET] = session
    return who


def with_pre_session(request: web.Request, response: web.Response) -> web.Response:
    """Keep the pre-session cookie the sign-in forms' CSRF tokens are bound to."""
    if request.cookies.get(PRE_COOKIE) != request.get(CSRF_SECRET):
        set_cookie(request, response, PRE_COOKIE, request[CSRF_SECRET], max_age=3600, path=PREFIX)
    return response


def pre_session(request: web.Request) -> None:
    request[CSRF_SECRET] = request.cookies.get(PRE_COOKIE) or new_token()


def start_session(request: web.Request, session: str) -> web.Response:
    response = redirect("/overview")
    set_cookie(
        request, response, SESSION_COOKIE, session, max_age=SESSION_TTL_MS // 1000, path=PREFIX
    )
    response.del_cookie(PRE_COOKIE, path=PREFIX)
    return response


async def form(request: web.Request, secret: str) -> dict[str, str]:
    """The POSTed form's text fields, once its CSRF token matches `secret`'s."""
    data = await request.post()
    fields = {k: v for k, v in data.items() if isinstance(v, str)}
    if not csrf_ok(secret, fields.get("csrf", "")):
        raise Refused(403, "this form's security token is missing or out of date: reload the page")
    return fields


class _SignInFirst(Exception):
    pass


@web.middleware
async def guard(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Security headers on every answer; failures as pages."""
    try:
        response = await handler(request)
    except _SignInFirst:
        response = redirect("/sign-in")
    except Refused as exc:
        response = _failure(request, exc.status, str(exc))
    except BillingError as exc:
        if exc.status >= 500:
            log.error("console_error", path=request.path, error=str(exc))
        response = _failure(request, exc.status, str(exc))
    except InvalidValue as exc:
        response = _failure(request, 400, str(exc))
    except web.HTTPException:
        raise  # aiohttp's own answers (404, 405) keep their status
    except Exception:  # a bug: a plain page, the trace in the log
        log.exception("console_internal_error", path=request.path)
        response = _failure(request, 500, "internal error")
    response.headers.update(SECURITY_HEADERS)
    return response


def _failure(request: web.Request, status: int, message: str) -> web.Response:
    return render(request, "error.html", {"status": status, "message": message}, status=status)
