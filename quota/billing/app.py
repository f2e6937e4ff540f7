"""The HTTP shell: aiohttp routes, bearer-token auth and JSON errors.

Invariants:
- Every answer is JSON; every error is `{"error": message}` with a 4xx status
  for the client's mistakes (a 500 only for a bug or a failed disk), and a
  refused request writes nothing (its transaction never committed).
- A route accepts only the token kinds it lists: a valid token of another kind
  is 403; an unknown token 401. A source address that sent too many unknown
  tokens is answered 429 with Retry-After until its window ends, before any
  database read; the configured admin and relay tokens still pass (they are
  checked in memory), so an attacker sharing an address cannot lock them out.
- A 405 carries the `Allow` header of the path's methods.
- Request bodies are parsed strictly into the route's wire message before any
  service code runs.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any

import msgspec
import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from quota.billing.auth import Principal
from quota.billing.console.app import console_app
from quota.billing.errors import (
    BadRequest,
    BillingError,
    Forbidden,
    TooManyRequests,
    Unauthorized,
)
from quota.billing.openapi import document
from quota.billing.push import serve_events
from quota.billing.routes import ROUTES, SYNC_MAX_BODY, Route
from quota.billing.service import BillingService
from quota.contract import wire

log = structlog.get_logger("quota.billing")

SERVICE: web.AppKey[BillingService] = web.AppKey("service", BillingService)
_ENCODER = msgspec.json.Encoder()
MAX_BODY = 256 * 1024  # of every route but /v1/sync (`Route.max_body`)
MAX_KEY = 200
# Printable ASCII, no space at either end (HTTP strips those); the document's pattern.
KEY_PATTERN = re.compile(r"[!-~](?:[ -~]{0,198}[!-~])?", re.ASCII)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    if len(message) > wire.MAX_STR:  # the document's maxLength: messages may quote input
        message = message[: wire.MAX_STR - 3] + "..."
    return web.json_response(wire.dump(wire.ErrorBody(error=message)), status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Turn every failure into a JSON error answer."""
    try:
        return await handler(request)
    except wire.WireError as exc:
        return _error(400, str(exc))
    except BillingError as exc:
        if exc.status >= 500:
            log.error("billing_error", path=request.path, error=str(exc))
        answer = _error(exc.status, str(exc))
        if isinstance(exc, TooManyRequests):
            answer.headers["Retry-After"] = str(exc.retry_after_s)
        return answer
    except web.HTTPException as exc:
        answer = _error(exc.status, exc.reason)
        if "Allow" in exc.headers:  # a 405 names the methods the path takes
            answer.headers["Allow"] = exc.headers["Allow"]
        return answer
    except Exception as exc:  # a bug: answer 500 and log it, never a bare traceback
        log.exception("billing_internal_error", path=request.path)
        return _error(500, f"internal error ({type(exc).__name__})")


def _whole_number(text: str) -> int | float:
    """A JSON number with a fraction or exponent: an int when whole (JSON Schema's integer).

    `1.0` and `2e3` are integers to JSON Schema, so the document allows them; any
    other such number stays a float, which the wire refuses. Long texts are not
    expanded (`1e999999999` would cost a huge int), so they stay floats too.
    """
    if len(text) <= 32:
        with contextlib.suppress(ArithmeticError, ValueError):
            value = Decimal(text)
            if value == value.to_integral_value() and abs(value) <= wire.MAX_INT:
                return int(value)
    return float(text)


async def _body(request: web.Request, route: Route) -> Any:
    if (request.content_length or 0) > route.max_body:
        raise web.HTTPRequestEntityTooLarge(route.max_body, request.content_length or 0)
    raw = await request.read()
    if len(raw) > route.max_body:  # sent without a length (chunked)
        raise web.HTTPRequestEntityTooLarge(route.max_body, len(raw))
    if route.request is None:
        if raw.strip() not in (b"", b"{}"):
            raise BadRequest("this endpoint takes no request body")
        return None
    if request.content_type != "application/json":
        raise BadRequest("body: send JSON with Content-Type: application/json")
    return _decode(raw, route.request)


def _decode(raw: bytes, cls: type[Any]) -> Any:
    """The body as a `cls` message: msgspec's own JSON decoder first, the strict rules after.

    Decoding straight into the message takes a third of `json.loads` and a
    conversion (a sync report of 10,000 agents is about 1 MB). Whatever it
    refuses (a whole number written `1.0`, or a body that is not valid) is
    decoded again the long way, so an accepted body and every error message are
    the same as before.
    """
    with contextlib.suppress(msgspec.DecodeError):  # ValidationError is a DecodeError
        return msgspec.json.decode(raw, type=cls)
    try:
        data = json.loads(raw, parse_float=_whole_number)
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, an integer of 5000 digits
        raise BadRequest(f"body: malformed JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("body: JSON nested too deeply") from None
    return wire.parse(cls, data)


def _token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send Authorization: Bearer <token>")
    return token.strip()


def _key(request: web.Request, route: Route) -> str:
    if not route.keyed:
        return ""
    key = request.headers.get("Idempotency-Key", "")
    if KEY_PATTERN.fullmatch(key) is None:
        raise BadRequest(
            f"Idempotency-Key header: required, 1..{MAX_KEY} printable ASCII characters"
            " (no space at either end)"
        )
    return key


async def _arguments(request: web.Request, route: Route) -> dict[str, Any]:
    """The handler's keyword arguments: path parameters, then key, body and query as it takes."""
    args: dict[str, Any] = dict(request.match_info)
    key = _key(request, route)
    body = await _body(request, route)
    if route.keyed:
        args["key"] = key
    if route.request is not None:
        args["body"] = body
    if route.query:
        args["query"] = dict(request.query)
    return args


async def _principal(service: BillingService, request: web.Request) -> Principal:
    """Who sends this token; an unknown one counts against the source address."""
    token = _token(request)
    who = service.tokens.configured(token)
    if who is not None:
        return who
    source, now = request.remote or "", service.runner.clock.now_ms()
    wait_ms = service.auth_failures.retry_after_ms(source, now)
    if wait_ms:
        retry_after = -(-wait_ms // 1000)
        raise TooManyRequests(
            f"too many unknown tokens from {source}; retry after {retry_after} s", retry_after
        )
    who = await service.tokens.account(token)
    if who is None:
        service.auth_failures.failed(source, now)
        raise Unauthorized("unknown token")
    return who


def _a(kind: str) -> str:
    """ "an admin token", "an account token", "a relay token"."""
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} token"


def _wrong_kind(kind: str, route: Route) -> str:
    """The 403 text: which token came, and which the route takes."""
    wanted = " or ".join(_a(k) for k in sorted(route.auth))
    return f"{_a(kind)} may not call {route.method} {route.path}; it takes {wanted}"


def _handler(route: Route) -> _Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        service = request.app[SERVICE]
        who = await _principal(service, request)
        if who.kind not in route.auth:
            raise Forbidden(_wrong_kind(who.kind, route))
        if not route.query and request.query:
            raise BadRequest(f"unknown query parameter(s): {', '.join(sorted(request.query))}")
        if route.websocket and web.WebSocketResponse().can_prepare(request).ok:
            return await serve_events(request, service.push, who.id)
        args = await _arguments(request, route)
        result = await route.handler(service, who, **args)
        # msgspec writes the message's JSON directly: a sync answer of 10,000 leases
        # costs a few ms, not the tens a dump to dicts and json.dumps take
        body = _ENCODER.encode(result)
        return web.Response(body=body, status=route.status, content_type="application/json")

    return handle


async def _openapi(request: web.Request) -> web.StreamResponse:
    return web.json_response(document())


async def _healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "alive"})


async def _readyz(request: web.Request) -> web.StreamResponse:
    """Ready when the database answers a read; 503 with the reasons otherwise."""
    reasons = []
    try:
        await request.app[SERVICE].store.ping()
    except Exception as exc:  # any failure to read means not ready, whatever its type
        reasons.append(f"database not readable: {exc}")
    body = {"status": "not ready" if reasons else "ready", "reasons": reasons, "notes": []}
    return web.json_response(body, status=503 if reasons else 200)


async def _to_console(request: web.Request) -> web.StreamResponse:
    return web.Response(status=308, headers={"Location": "/console/"})


def make_app(service: BillingService, middlewares: Sequence[Middleware] = ()) -> web.Application:
    """The aiohttp application over `service`; `middlewares` run outside the error handling."""
    app = web.Application(
        middlewares=[*middlewares, errors_middleware], client_max_size=SYNC_MAX_BODY
    )
    app[SERVICE] = service

    async def close_push(_: web.Application) -> None:
        service.push.close_all()  # lets each WebSocket handler end before cleanup waits

    app.on_shutdown.append(close_push)
    app.router.add_get("/openapi.json", _openapi)
    app.router.add_get("/healthz", _healthz)  # no token: they tell only alive and ready
    app.router.add_get("/readyz", _readyz)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, _handler(route), name=route.name)
    app.router.add_get("/console", _to_console)  # before the sub-application, which takes it
    app.add_subapp("/console/", console_app(service))  # HTML pages for account holders
    return app
