"""The small HTTP service `quotarelay up` starts on a loopback port for the demo to reach.

Invariants:
- It listens on 127.0.0.1 only and is an async context manager: it stops with
  the demo. A port already in use is not an error of the demo: `running` stays
  False and the demo reaches whatever listens there.
- `GET /` answers a short text; `GET /bytes/SIZE` ("5M", "1500") answers
  exactly SIZE bytes (at most `MAX_BYTES`) of a fixed pattern, so a download
  through the relay can be checked byte for byte and pause at the plan's end.
"""

from __future__ import annotations

from types import TracebackType

from aiohttp import web

from quota.core.errors import InvalidValue
from quota.core.units import parse_size

MAX_BYTES = 10**9
CHUNK = 64 * 1024
PATTERN = bytes(range(256)) * (CHUNK // 256)
HELLO = "hello from the quotarelay demo service; GET /bytes/6M for 6 MB\n"


def pattern_bytes(n: int) -> bytes:
    """The first `n` bytes `/bytes/...` answers (for checks)."""
    return (PATTERN * (n // len(PATTERN) + 1))[:n]


async def _hello(request: web.Request) -> web.StreamResponse:
    return web.Response(text=HELLO)


async def _bytes(request: web.Request) -> web.StreamResponse:
    try:
        size = parse_size(request.match_info["size"])
    except InvalidValue as exc:
        raise web.HTTPBadRequest(text=f"{exc}\n") from None
    if size > MAX_BYTES:
        raise web.HTTPBadRequest(text=f"at most {MAX_BYTES} bytes\n")
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    left = size
    while left:
        chunk = PATTERN[: min(left, CHUNK)]
        await response.write(chunk)
        left -= len(chunk)
    await response.write_eof()
    return response


class DemoService:
    """`async with DemoService(port) as svc:` serves while the block runs, if the port was free."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.running = False
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> DemoService:
        app = web.Application()
        app.router.add_get("/", _hello)
        app.router.add_get("/bytes/{size}", _bytes)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
        except OSError:
            await runner.cleanup()  # the port is taken: the demo reaches what listens there
            return self
        self._runner, self.running = runner, True
        if self.port == 0 and runner.addresses:
            self.port = int(runner.addresses[0][1])
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
