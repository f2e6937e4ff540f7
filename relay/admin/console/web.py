"""The operator view: agents and buckets, live streams, stream-log search, grant and deactivate.

Invariants:
- Mounted at /console/ on the admin listener, outside the bearer-token check:
  every page but sign-in needs a session opened with the admin token, and
  every POST a CSRF token bound to that session (`quota.webpages`); a missing
  or wrong one is 403 and changes nothing.
- Grants and state changes call the same `Control` methods as the admin API's
  POSTs, so they behave, log and refuse exactly as those do.
- Live streams refresh on their own: `static/live.js` polls `streams.json`
  (same origin, the session cookie) and writes cells with `textContent` only.
- The stream log is read through `relay.streamlog.query` (read-only).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import aiohttp_jinja2
import structlog
from aiohttp import web

from quota.core.errors import InvalidValue
from quota.core.units import parse_duration_ms, parse_size
from quota.webpages import (
    SECURITY_HEADERS,
    csrf_ok,
    csrf_token,
    new_token,
    set_cookie,
    setup_templates,
    size,
)
from relay.admin.console.sessions import SESSION_TTL_MS, OperatorSessions
from relay.errors import UnknownAgent
from relay.streamlog.query import list_streams
from relay.streamlog.writer import StreamLogError

log = structlog.get_logger()

HERE = Path(__file__).parent
PREFIX = "/console"
SESSION_COOKIE = "qr_operator"
PRE_COOKIE = "qr_operator_pre"
SEARCH_LIMIT = 200
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class OperatorControl(Protocol):
    """What the view needs of the relay (relay.hub.control.Control has it)."""

    def grant(self, agent_id: str, nbytes: int) -> dict[str, object]: ...

    def set_active(self, agent_id: str, active: bool) -> dict[str, object]: ...

    def agents(self) -> list[dict[str, object]]: ...

    def streams(self) -> list[dict[str, object]]: ...


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _SignInFirst(Exception):
    pass


class OperatorView:
    """The pages, over a relay's control, its admin token and its stream log file."""

    def __init__(self, control: OperatorControl, token: bytes, stream_log: Path | None) -> None:
        self.control = control
        self.sessions = OperatorSessions(token)
        self.stream_log = stream_log

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        setup_templates(app, HERE / "templates", {})
        app.router.add_static("/static", HERE / "static")
        app.router.add_get("/", self.index)
        app.router.add_get("/sign-in", self.sign_in_page)
        app.router.add_post("/sign-in", self.sign_in)
        app.router.add_post("/sign-out", self.sign_out)
        app.router.add_get("/streams.json", self.streams_json)
        app.router.add_get("/log", self.search)
        app.router.add_post("/agents/{agent_id}/grant", self.grant)
        app.router.add_post("/agents/{agent_id}/state", self.state)
        return app

    # -- plumbing ----------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except _SignInFirst:
            response = web.Response(status=303, headers={"Location": PREFIX + "/sign-in"})
        except _Refused as exc:
            response = self._page(request, "error.html", {"message": str(exc)}, exc.status)
        except UnknownAgent as exc:
            response = self._page(request, "error.html", {"message": str(exc)}, 404)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("admin_error", method=request.method, path=request.path)
            response = self._page(request, "error.html", {"message": "internal error"}, 500)
        response.headers.update(SECURITY_HEADERS)
        return response

    def _session(self, request: web.Request) -> str:
        session = request.cookies.get(SESSION_COOKIE, "")
        if not self.sessions.valid(session):
            raise _SignInFirst
        return session

    async def _form(self, request: web.Request, secret: str) -> dict[str, str]:
        data = await request.post()
        fields = {k: v for k, v in data.items() if isinstance(v, str)}
        if not csrf_ok(secret, fields.get("csrf", "")):
            raise _Refused(403, "this form's security token is missing or out of date")
        return fields

    @staticmethod
    def _page(
        request: web.Request,
        template: str,
        context: dict[str, Any],
        status: int = 200,
        secret: str = "",
    ) -> web.Response:
        base = {"csrf": csrf_token(secret) if secret else "", "prefix": PREFIX}
        return aiohttp_jinja2.render_template(template, request, {**base, **context}, status=status)

    # -- pages -------------------------------------------------------------------------

    async def sign_in_page(self, request: web.Request) -> web.StreamResponse:
        pre = request.cookies.get(PRE_COOKIE) or new_token()
        response = self._page(request, "sign_in.html", {}, secret=pre)
        set_cookie(request, response, PRE_COOKIE, pre, max_age=3600, path=PREFIX)
        return response

    async def sign_in(self, request: web.Request) -> web.StreamResponse:
        fields = await self._form(request, request.cookies.get(PRE_COOKIE, ""))
        session = self.sessions.open(fields.get("token", "").strip())
        if session is None:
            log.info("admin_console_refused", peer=request.remote)
            raise _Refused(401, "wrong admin token")
        response = web.Response(status=303, headers={"Location": PREFIX + "/"})
        max_age = SESSION_TTL_MS // 1000
        set_cookie(request, response, SESSION_COOKIE, session, max_age=max_age, path=PREFIX)
        response.del_cookie(PRE_COOKIE, path=PREFIX)
        return response

    async def sign_out(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        await self._form(request, session)
        self.sessions.close(session)
        response = web.Response(status=303, headers={"Location": PREFIX + "/sign-in"})
        response.del_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    async def index(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        context = {
            "agents": self.control.agents(),
            "streams": [_stream_row(s) for s in self.control.streams()],
            "notice": request.query.get("notice", ""),
        }
        return self._page(request, "index.html", context, secret=session)

    async def streams_json(self, request: web.Request) -> web.StreamResponse:
        self._session(request)
        rows = [_stream_row(s) for s in self.control.streams()]
        return web.json_response({"streams": rows, "count": len(rows)})

    async def search(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        query = {k: request.query.get(k, "").strip() for k in ("agent", "tunnel", "since")}
        context: dict[str, Any] = {"query": query, "rows": None, "limit": SEARCH_LIMIT}
        if any(query.values()):
            context["rows"] = await self._matching(query)
        return self._page(request, "log.html", context, secret=session)

    async def _matching(self, query: dict[str, str]) -> list[dict[str, Any]]:
        if self.stream_log is None:
            raise _Refused(404, "this relay keeps no stream log")
        since_ms = None
        if query["since"]:
            try:
                since_ms = _now_ms() - parse_duration_ms(query["since"])
            except InvalidValue as exc:
                raise _Refused(400, f"since: {exc} (for example 15m, 2h, 7d)") from None
        try:
            rows = await list_streams(
                self.stream_log,
                limit=SEARCH_LIMIT,
                agent=query["agent"] or None,
                tunnel=query["tunnel"] or None,
                since_ms=since_ms,
            )
        except StreamLogError as exc:
            raise _Refused(503, str(exc)) from None
        return list(reversed(rows))  # newest first

    async def grant(self, request: web.Request) -> web.StreamResponse:
        fields = await self._form(request, self._session(request))
        try:
            nbytes = parse_size(fields.get("bytes", "").strip())
        except InvalidValue as exc:
            raise _Refused(400, f"bytes: {exc}") from None
        agent_id = request.match_info["agent_id"]
        self.control.grant(agent_id, nbytes)
        return web.Response(status=303, headers={"Location": f"{PREFIX}/?notice=granted"})

    async def state(self, request: web.Request) -> web.StreamResponse:
        fields = await self._form(request, self._session(request))
        if fields.get("active") not in ("0", "1"):
            raise _Refused(400, "active: must be 0 or 1")
        self.control.set_active(request.match_info["agent_id"], fields["active"] == "1")
        return web.Response(status=303, headers={"Location": f"{PREFIX}/?notice=state"})


def _now_ms() -> int:
    return time.time_ns() // 1_000_000  # the stream log's times are wall-clock ms


def _stream_row(stream: dict[str, object]) -> dict[str, object]:
    """A live stream as the page shows it: sizes for people."""
    up, down = stream.get("bytes_up", 0), stream.get("bytes_down", 0)
    return {
        **stream,
        "up": size(up) if isinstance(up, int) else "",
        "down": size(down) if isinstance(down, int) else "",
    }
