"""An HTTP proxy between a relay and the billing API that counts, duplicates and replays syncs.

With `chaos` on, every /v1/sync request is forwarded twice (a duplicate) and,
after it, one older request is sent again (a replay arriving out of order).
With `delay_s`, each /v1/sync answer is held back that long (a slow billing API).
The push channel (/v1/relay/events) is not proxied.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp


class SyncProxy:
    """An HTTP proxy between a relay and the billing API that can count, duplicate and replay.

    With `chaos` on, every /v1/sync request is forwarded twice (a duplicate) and,
    after it, one older request is sent again (a replay arriving out of order).
    """

    def __init__(self, target: str, *, chaos: bool = False, delay_s: float = 0) -> None:
        self.target = target
        self.chaos = chaos
        self.delay_s = delay_s
        self.syncs: list[tuple[float, dict[str, Any]]] = []
        self.port = 0
        self._runner: aiohttp.web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> SyncProxy:
        from aiohttp import web

        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None and self._session is not None
        await self._runner.cleanup()
        await self._session.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _forward(
        self, method: str, path: str, headers: Any, body: bytes
    ) -> tuple[int, bytes]:
        assert self._session is not None
        async with self._session.request(
            method, self.target + path, headers=headers, data=body
        ) as resp:
            return resp.status, await resp.read()

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        if request.path == "/v1/relay/events":  # the push channel is not proxied
            raise web.HTTPNotFound()
        body = await request.read()
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "content-type")
        }
        status, answer = await self._forward(request.method, request.path_qs, headers, body)
        if request.path == "/v1/sync":
            loop = asyncio.get_running_loop()
            self.syncs.append((loop.time(), json.loads(body)))
            if self.chaos:
                await self._forward("POST", "/v1/sync", headers, body)  # a duplicate
                if len(self.syncs) > 1:
                    old = self.syncs[len(self.syncs) // 2][1]
                    await self._forward("POST", "/v1/sync", headers, json.dumps(old).encode())
            if self.delay_s:
                await asyncio.sleep(self.delay_s)  # the billing API is slow to answer
        return web.Response(status=status, body=answer, content_type="application/json")
