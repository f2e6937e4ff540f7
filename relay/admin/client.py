"""Client of the relay's admin API, used by the `quotarelay relay` commands and tests.

Invariants:
- One aiohttp session per client, opened and closed with `async with`; every
  call has an explicit timeout of a few seconds, never aiohttp's 300 s default.
- aiohttp errors never escape: a refused or failed call raises `AdminError`
  whose message is the server's own (for 4xx/5xx) or says the relay cannot be
  reached at the address tried.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from relay.config import HostPort, parse_host_port
from relay.errors import ConfigError, RelayError

DEFAULT_TIMEOUT_S = 5.0


class AdminError(RelayError):
    """The admin API refused a call or could not be reached; the message says which."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status, None when no answer came


def parse_admin_target(text: str) -> HostPort | Path:
    """`unix:PATH`, `http://HOST:PORT` or `HOST:PORT` as the admin API's address."""
    if text.startswith("unix:"):
        if not text[5:]:
            raise AdminError(f"--admin: expected unix:PATH, got {text!r}")
        return Path(text[5:]).expanduser()
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme != "http" or parts.path not in ("", "/") or not parts.netloc:
            raise AdminError(f"--admin: expected http://HOST:PORT or unix:PATH, got {text!r}")
        text = parts.netloc
    try:
        return parse_host_port(text, "--admin")
    except ConfigError as exc:
        raise AdminError(f"{exc} (or unix:PATH)") from None


def describe_target(target: HostPort | Path) -> str:
    if isinstance(target, Path):
        return f"unix:{target}"
    host = f"[{target.host}]" if ":" in target.host else target.host
    return f"http://{host}:{target.port}"


class AdminClient:
    """Calls the admin API at `target` with `token`; an async context manager."""

    def __init__(
        self, target: HostPort | Path, token: str, *, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.target = target
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=timeout_s)
        self._base = "http://localhost" if isinstance(target, Path) else describe_target(target)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AdminClient:
        connector: aiohttp.BaseConnector = (
            aiohttp.UnixConnector(path=str(self.target))
            if isinstance(self.target, Path)
            else aiohttp.TCPConnector()
        )
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, headers=headers
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        session, self._session = self._session, None
        if session is not None:
            await asyncio.shield(session.close())

    # -- calls ---------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        return await self._object("GET", "/v1/status")

    async def agents(self) -> list[dict[str, Any]]:
        return _list(await self._object("GET", "/v1/agents"), "agents")

    async def agent(self, agent_id: str) -> dict[str, Any]:
        return await self._object("GET", f"/v1/agents/{_seg(agent_id)}")

    async def streams(self) -> list[dict[str, Any]]:
        return _list(await self._object("GET", "/v1/streams"), "streams")

    async def grant(self, agent_id: str, nbytes: int | str) -> dict[str, Any]:
        return await self._object("POST", f"/v1/agents/{_seg(agent_id)}/grant", {"bytes": nbytes})

    async def revoke(self, agent_id: str, nbytes: int | str) -> dict[str, Any]:
        return await self._object("POST", f"/v1/agents/{_seg(agent_id)}/revoke", {"bytes": nbytes})

    async def set_active(self, agent_id: str, active: bool) -> dict[str, Any]:
        return await self._object("POST", f"/v1/agents/{_seg(agent_id)}/state", {"active": active})

    async def pause_stream(self, stream_id: str, paused: bool) -> dict[str, Any]:
        path = f"/v1/streams/{_seg(stream_id)}/pause"
        return await self._object("POST", path, {"paused": paused})

    async def _object(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        if self._session is None:
            raise AdminError("AdminClient used outside `async with`")
        where = describe_target(self.target)
        try:
            async with self._session.request(method, self._base + path, json=body) as response:
                status = response.status
                try:
                    data = await response.json(content_type=None)
                except ValueError:
                    data = None
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or exc.os_error
            raise AdminError(
                f"cannot reach the relay admin API at {where}: is the relay running? ({reason})"
            ) from None
        except aiohttp.ClientError as exc:
            raise AdminError(f"the relay admin API at {where} failed: {exc}") from None
        except TimeoutError:
            raise AdminError(
                f"the relay admin API at {where} did not answer within {self._timeout.total} s"
            ) from None
        if status >= 400:
            message = data.get("error") if isinstance(data, dict) else None
            raise AdminError(str(message or f"HTTP {status} from {where}"), status)
        if not isinstance(data, dict):
            raise AdminError(f"the relay admin API at {where} sent an answer that is not JSON")
        return data


def _seg(agent_id: str) -> str:
    return quote(agent_id, safe="")


def _list(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = data.get(key)
    if not isinstance(items, list):
        raise AdminError(f"the relay admin API answered without {key!r}")
    return items
