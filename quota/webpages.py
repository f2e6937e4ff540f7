"""What the billing console and the relay's operator view share: headers, CSRF, cookies, filters.

Invariants:
- Every page answer carries `SECURITY_HEADERS`: a Content-Security-Policy that
  allows scripts, styles and fetches from the page's own origin only (no
  inline script or style), no framing, no referrer, no caching.
- Cookies set here are HttpOnly, SameSite=Strict, limited to the console's
  path, and Secure when the request came over TLS.
- A CSRF token is the HMAC-SHA256 of a fixed label under the secret its forms
  are bound to (a session or pre-session token), compared in constant time.
- Templates are autoescaped, and undefined names are errors, not blanks.
- Sizes and times are rendered from integers (no float), times in UTC.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
_UNITS = (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3))


def new_token() -> str:
    """32 random bytes, URL-safe: a session, pre-session or link token."""
    return secrets.token_urlsafe(32)


def csrf_token(secret: str) -> str:
    """The CSRF token of the forms bound to `secret`."""
    return hmac.new(secret.encode(), b"quotarelay-console-csrf", hashlib.sha256).hexdigest()


def csrf_ok(secret: str, given: str) -> bool:
    return bool(secret) and hmac.compare_digest(csrf_token(secret).encode(), given.encode())


def set_cookie(
    request: web.Request,
    response: web.StreamResponse,
    name: str,
    value: str,
    *,
    max_age: int,
    path: str,
) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path=path, httponly=True, samesite="Strict",
        secure=request.secure,
    )  # fmt: skip


def size(nbytes: int) -> str:
    """Bytes for people, one decimal, rounded down: 4_250_000 -> "4.2 MB", 999 -> "999 B"."""
    sign, n = ("-" if nbytes < 0 else ""), abs(nbytes)
    for unit, scale in _UNITS:
        if n >= scale:
            tenths = n * 10 // scale
            return f"{sign}{tenths // 10}.{tenths % 10} {unit}"
    return f"{sign}{n} B"


def when(ms: int | None) -> str:
    """Milliseconds since the epoch as "2026-12-02 09:41:05 UTC"; a dash for none."""
    if ms is None:
        return "-"
    moment = dt.datetime.fromtimestamp(ms // 1000, dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def setup_templates(
    app: web.Application, folder: Path, filters: dict[str, Callable[..., Any]]
) -> jinja2.Environment:
    """Templates from `folder` for `app`, autoescaped, with `size`, `when` and `filters`."""
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(folder),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(size=size, when=when, **filters)
    return env
