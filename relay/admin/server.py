"""The relay's admin API: a small local aiohttp app that operators drive with the CLI.

Invariants:
- It listens only where `admin.listen` says: a TCP address (meant for 127.0.0.1)
  or a unix socket whose file is created with mode 0600 before anyone can
  connect (bound in a private folder, then renamed into place).
- Every request carries `Authorization: Bearer <token>`, compared in constant
  time, but `/healthz` and `/readyz`, which tell only whether the relay is alive
  and ready (relay.admin.health). An empty token is refused over TCP; on a unix
  socket it means the file permissions are the only guard.
- A request that is refused (401, 400, 404, 413) changes nothing: the body is
  read and validated in full before the relay is called.
- Answers are JSON; errors are `{"error": "<message naming the problem>"}`.
- Each request is logged once as `admin_request` (method, path, status).
- With a token, `/console/` serves the operator view (relay.admin.console):
  its pages check a session cookie opened with that same token instead of
  the bearer header, and a CSRF token on every form.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import structlog
from aiohttp import web

from quota.core.errors import InvalidValue
from quota.core.units import MAX_BYTES, parse_size
from relay.admin.console.web import OperatorView
from relay.config import HostPort
from relay.errors import ConfigError, UnknownAgent, UnknownStream

MAX_BODY = 64 * 1024
SHUTDOWN_TIMEOUT_S = 2.0

log = structlog.get_logger()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RelayControl(Protocol):
    def grant(self, agent_id: str, nbytes: int) -> dict[str, object]: ...

    def revoke(self, agent_id: str, nbytes: int) -> dict[str, object]: ...

    def set_active(self, agent_id: str, active: bool) -> dict[str, object]: ...

    def agents(self) -> list[dict[str, object]]: ...

    def streams(self) -> list[dict[str, object]]: ...

    def pause_stream(self, stream_id: str, paused: bool) -> dict[str, object]: ...

    def status(self) -> dict[str, object]: ...


class Readiness(Protocol):
    def readiness(self) -> tuple[list[str], list[str]]: ...


OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # answered without a token
CONSOLE = "/console/"  # the operator view: its own session check (relay.admin.console)


class _Problem(Exception):
    """A request the API refuses: answered with `status` and `message`, nothing changed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


# -- request bodies ------------------------------------------------------------------


async def _read_object(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
    """The JSON object in the body, with no key outside `allowed`."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise _Problem(413, f"request body larger than {MAX_BODY} bytes")
    raw = await request.read()  # the app's client_max_size enforces MAX_BODY when chunked
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Problem(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _Problem(400, f"request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _Problem(400, f"unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    return body


def _byte_count(body: dict[str, Any]) -> int:
    """The `bytes` field as an integer: a JSON integer or a size string such as "10M"."""
    if "bytes" not in body:
        raise _Problem(400, 'missing field "bytes" (an integer or a size such as "10M")')
    value = body["bytes"]
    if isinstance(value, bool) or not isinstance(value, int | str):
        kind = "a boolean" if isinstance(value, bool) else type(value).__name__
        raise _Problem(400, f'"bytes" must be an integer or a size string, not {kind}')
    if isinstance(value, int) and value < 0:
        raise _Problem(400, f'"bytes" must not be negative, got {value}')
    if isinstance(value, int) and value > MAX_BYTES:
        raise _Problem(400, f'"bytes" must be at most 2**62 ({MAX_BYTES}), got {value}')
    try:
        return parse_size(value)
    except InvalidValue as exc:
        raise _Problem(400, f'"bytes": {exc}') from None


# -- handlers ------------------------------------------------------------------------


class _Routes:
    """The endpoints, each a thin translation from HTTP to one `RelayControl` call."""

    def __init__(
        self,
        control: RelayControl,
        health: Readiness | None,
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.control = control
        self.health = health
        self.refresh = refresh  # a relay of workers: fresh reports after a change

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/v1/status", self.status)
        app.router.add_get("/v1/agents", self.agents)
        app.router.add_get("/v1/agents/{agent_id}", self.agent)
        app.router.add_get("/v1/streams", self.streams)
        app.router.add_post("/v1/agents/{agent_id}/grant", self.grant)
        app.router.add_post("/v1/agents/{agent_id}/revoke", self.revoke)
        app.router.add_post("/v1/agents/{agent_id}/state", self.state)
        app.router.add_post("/v1/streams/{stream_id}/pause", self.pause)

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.control.status())

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(self, request: web.Request) -> web.Response:
        reasons, notes = self.health.readiness() if self.health else ([], [])
        body = {"status": "not ready" if reasons else "ready", "reasons": reasons, "notes": notes}
        return web.json_response(body, status=503 if reasons else 200)

    async def agents(self, request: web.Request) -> web.Response:
        return web.json_response({"agents": self.control.agents()})

    async def agent(self, request: web.Request) -> web.Response:
        agent_id = request.match_info["agent_id"]
        for view in self.control.agents():
            if view.get("agent_id") == agent_id:
                return web.json_response(view)
        raise UnknownAgent(agent_id)

    async def streams(self, request: web.Request) -> web.Response:
        return web.json_response({"streams": self.control.streams()})

    async def grant(self, request: web.Request) -> web.Response:
        nbytes = _byte_count(await _read_object(request, frozenset({"bytes"})))
        agent_id = request.match_info["agent_id"]
        return web.json_response(await self._carried_out(self.control.grant(agent_id, nbytes)))

    async def revoke(self, request: web.Request) -> web.Response:
        nbytes = _byte_count(await _read_object(request, frozenset({"bytes"})))
        agent_id = request.match_info["agent_id"]
        return web.json_response(await self._carried_out(self.control.revoke(agent_id, nbytes)))

    async def _carried_out(self, view: dict[str, object]) -> dict[str, object]:
        """An agent's view once a change is carried out: at once in one process; in a relay of
        workers, once each worker answered a refresh sent after it (a grant is in the bucket
        of the worker that waits for it, as one process's bucket has it on the answer)."""
        if self.refresh is None:
            return view
        await self.refresh()
        agent_id = view.get("agent_id")
        return next((v for v in self.control.agents() if v.get("agent_id") == agent_id), view)

    async def state(self, request: web.Request) -> web.Response:
        body = await _read_object(request, frozenset({"active"}))
        if "active" not in body:
            raise _Problem(400, 'missing field "active" (true or false)')
        active = body["active"]
        if not isinstance(active, bool):
            raise _Problem(400, f'"active" must be true or false, got {active!r}')
        view = self.control.set_active(request.match_info["agent_id"], active)
        return web.json_response(await self._carried_out(view))

    async def pause(self, request: web.Request) -> web.Response:
        body = await _read_object(request, frozenset({"paused"}))
        paused = body.get("paused")
        if not isinstance(paused, bool):
            raise _Problem(400, f'"paused" must be true or false, got {paused!r}')
        stream_id = request.match_info["stream_id"]
        view = self.control.pause_stream(stream_id, paused)
        if self.refresh is not None:  # a relay of workers: the stream's worker paused it by now
            await self.refresh()
            fresh = [s for s in self.control.streams() if s.get("stream_id") == stream_id]
            view = fresh[0] if fresh else view
        return web.json_response(view)


# -- the server ----------------------------------------------------------------------


class AdminServer:
    """The admin API listening on a TCP address or a unix socket, as an async context manager."""

    def __init__(
        self,
        control: RelayControl,
        listen: HostPort | Path,
        token: str,
        health: Readiness | None = None,
        stream_log: Path | None = None,
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.control = control
        self.health = health
        self.stream_log = stream_log
        self.refresh = refresh  # awaited before each authorized request (a relay of workers)
        self.listen = listen
        self.port: int | None = None  # the bound TCP port (useful with port 0)
        self._token = token.encode()
        self._runner: web.AppRunner | None = None
        self._socket_ino: int | None = None

    async def __aenter__(self) -> AdminServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        if isinstance(self.listen, HostPort) and not self._token:
            raise ConfigError("admin.token is required when admin.listen is a TCP address")
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._middleware])
        _Routes(self.control, self.health, self.refresh).add_to(app)
        if self._token:
            app.router.add_get(CONSOLE.rstrip("/"), _to_console)  # before the sub-application
            app.add_subapp(CONSOLE, OperatorView(self.control, self._token, self.stream_log).app())
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        try:
            await self._start_site(runner)
        except BaseException:
            await runner.cleanup()
            self._remove_socket()
            raise
        self._runner = runner
        if isinstance(self.listen, HostPort):
            self.port = int(runner.addresses[0][1])

    async def _start_site(self, runner: web.AppRunner) -> None:
        if isinstance(self.listen, Path):
            # not UnixSite: it binds with the umask's mode, readable for a moment
            sock = _bind_unix(self.listen)
            self._socket_ino = os.stat(self.listen).st_ino
            try:
                await web.SockSite(runner, sock).start()
            except BaseException:
                sock.close()
                raise
            return
        site = web.TCPSite(runner, self.listen.host, self.listen.port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(f"admin.listen: cannot listen on {self.listen}: {exc}") from None

    async def close(self) -> None:
        """Stop listening and finish in-flight requests; runs to the end even if cancelled."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        task = asyncio.ensure_future(runner.cleanup())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await task
            raise
        finally:
            self._remove_socket()

    def _remove_socket(self) -> None:
        """Unlink our socket file, but not one a successor put at the same path."""
        if isinstance(self.listen, Path) and self._socket_ino is not None:
            with contextlib.suppress(OSError):
                if os.stat(self.listen).st_ino == self._socket_ino:
                    self.listen.unlink()
            self._socket_ino = None

    def _authorized(self, request: web.Request) -> bool:
        if not self._token and isinstance(self.listen, Path):
            return True
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), self._token)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await self._answer(request, handler)
        log.info("admin_request", method=request.method, path=request.path, status=response.status)
        return response

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        console = (path.startswith(CONSOLE) or path == CONSOLE.rstrip("/")) and bool(self._token)
        if path not in OPEN_PATHS and not console and not self._authorized(request):
            return _error(401, "missing or wrong admin token (send Authorization: Bearer <token>)")
        try:
            if self.refresh is not None:
                await self.refresh()
            return await handler(request)
        except _Problem as exc:
            return _error(exc.status, exc.message)
        except (UnknownAgent, UnknownStream) as exc:
            return _error(404, str(exc))
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"request body larger than {MAX_BODY} bytes")
        except web.HTTPNotFound:
            return _error(404, f"no such endpoint: {request.method} {request.path}")
        except web.HTTPMethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.allowed_methods))
            return _error(405, f"{request.method} not allowed on {request.path} (use {allowed})")
        except web.HTTPException as exc:
            return _error(exc.status, exc.reason)
        except (InvalidValue, ConfigError) as exc:
            return _error(400, str(exc))
        except Exception:
            log.exception("admin_error", method=request.method, path=request.path)
            return _error(500, "internal error in the relay (see its log)")


async def _to_console(request: web.Request) -> web.StreamResponse:
    return web.Response(status=308, headers={"Location": CONSOLE})


def _bind_unix(path: Path) -> socket.socket:
    """A unix socket bound at `path` with mode 0600 from the moment it is reachable."""
    _remove_stale_socket(path)
    try:
        private = Path(tempfile.mkdtemp(prefix=".admin-", dir=path.parent))  # mode 0700
    except OSError as exc:
        raise ConfigError(f"admin.listen: cannot create a socket in {path.parent}: {exc}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        staged = private / "s"
        sock.bind(str(staged))
        os.chmod(staged, 0o600)
        os.replace(staged, path)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"admin.listen: cannot listen on unix:{path}: {exc}") from None
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return sock


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket file left by a relay that died; refuse to touch anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"admin.listen: cannot inspect {path}: {exc}") from None
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"admin.listen: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody answers: a stale file
    else:
        raise ConfigError(f"admin.listen: another process already listens on unix:{path}")
    finally:
        probe.close()
