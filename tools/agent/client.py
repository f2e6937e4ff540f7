"""The agent's life: connect, register every tunnel, wait, reconnect with backoff.

Invariants:
- One SSH connection at a time carries every tunnel of the agent (TCP and UDP,
  either role). A lost connection is retried with exponential backoff, each
  wait drawn between half and all of it (jitter), capped at `backoff_max`; a
  session that registered resets the backoff. A support channel the relay
  closes (its endpoint went away) ends the session, so it is reopened too.
- Every session registers the same tunnels, so the relay gives them the same
  tunnel ids; a public port the relay chose is asked for again by number (and
  any port if that one is gone).
- Local UDP listeners (`connect --udp`) are bound once and survive reconnects;
  TCP listeners are made per session.
- A refusal or failed login before any session registered ends the agent
  (exit 1): it is a mistake to fix, not a blip. Later it is retried like any
  disconnect. A relay that cannot be reached is always retried.
- Progress is printed on stdout as JSON lines: `tunnel_ready`, `listening`, `connected`,
  `agent_ready` (with the session number), `agent_disconnected`.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from quota.core.backoff import backoff_ms
from tools.agent.config import AgentConfig, Connect, Expose
from tools.agent.udp import LocalListener, SupportChannel, exposed_factory

INITIAL_BACKOFF_MS = 250


class AgentRefused(Exception):
    """The relay refused a tunnel or the login; the message says what."""


def emit(event: str, **values: Any) -> None:
    print(json.dumps({"event": event, **values}), flush=True)


@dataclass
class Plan:
    exposes: list[Expose]
    connects: list[Connect]
    given_ports: dict[str, int] = field(default_factory=dict)  # spec text -> port the relay gave
    listeners: dict[str, LocalListener] = field(default_factory=dict)
    sessions: int = 0  # sessions that registered everything


class _Client(asyncssh.SSHClient):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def debug_msg_received(self, msg: str, lang: str, always_display: bool) -> None:
        self.messages.append(msg)


def _factory(listener: LocalListener) -> Callable[[], LocalListener]:
    return lambda: listener


async def bind_udp_listeners(plan: Plan, idle_ms: int) -> None:
    loop = asyncio.get_running_loop()
    for spec in plan.connects:
        if spec.proto != "udp":
            continue
        listener = LocalListener(idle_ms)
        try:
            transport, _ = await loop.create_datagram_endpoint(
                _factory(listener), local_addr=(spec.bind, spec.local_port)
            )
        except OSError as exc:
            raise AgentRefused(f"--udp {spec.text}: cannot listen: {exc.strerror}") from None
        port = transport.get_extra_info("sockname")[1]
        plan.listeners[spec.text] = listener
        emit("listening", proto="udp", spec=spec.text, port=port)


async def _expose(conn: Any, client: _Client, plan: Plan, spec: Expose, idle_ms: int) -> None:
    wanted = plan.given_ports.get(spec.text, spec.port)
    for port in dict.fromkeys([wanted, spec.port]):
        try:
            if spec.proto == "udp":
                factory = exposed_factory((spec.host, spec.host_port), idle_ms)
                listener = await conn.create_server(factory, spec.listen_host, port)
            else:
                listener = await conn.forward_remote_port(
                    spec.listen_host, port, spec.host, spec.host_port
                )
        except asyncssh.ChannelListenError:
            continue
        got = listener.get_port()
        if spec.port == 0:
            plan.given_ports[spec.text] = got
        kind = f"{spec.proto}_{'endpoint' if spec.name else 'public'}"
        emit("tunnel_ready", kind=kind, spec=spec.text, name=spec.name or None, port=got)
        return
    # the relay sends its reason as a debug message just before the failure reply
    reason = client.messages[-1] if client.messages else "refused by the relay"
    raise AgentRefused(f"--{spec.proto} {spec.text}: {reason}")


async def _connect(conn: Any, plan: Plan, spec: Connect) -> None:
    target = f"{spec.name}:{spec.port}"
    try:
        if spec.proto == "tcp":
            listener = await conn.forward_local_port(
                spec.bind, spec.local_port, spec.name, spec.port
            )
            emit("listening", proto="tcp", spec=spec.text, port=listener.get_port())
            return
        local = plan.listeners[spec.text]
        _, channel = await conn.create_connection(
            lambda: SupportChannel(local, conn.close),
            f"udp/{spec.name}",
            spec.port,
            spec.bind,
            local.port,
        )
    except asyncssh.ChannelOpenError as exc:
        raise AgentRefused(f"--{spec.proto} {spec.text}: {exc.reason}") from None
    except OSError as exc:
        raise AgentRefused(f"--tcp {spec.text}: cannot listen: {exc.strerror}") from None
    local.attach(channel)
    emit("connected", proto="udp", spec=spec.text, target=target)


async def session(cfg: AgentConfig, plan: Plan) -> None:
    """One SSH session: register everything, then wait until the connection ends."""
    client = _Client()
    conn = await asyncssh.connect(
        cfg.host,
        cfg.port,
        username=cfg.user,
        client_keys=[str(cfg.key)],
        known_hosts=str(cfg.known_hosts) if cfg.known_hosts is not None else None,
        client_factory=lambda: client,
        agent_path=None,
        keepalive_interval=15,
        keepalive_count_max=3,
    )
    async with conn:
        for spec in plan.exposes:
            await _expose(conn, client, plan, spec, cfg.idle_timeout_ms)
        for conn_spec in plan.connects:
            await _connect(conn, plan, conn_spec)
        plan.sessions += 1
        emit("agent_ready", session=plan.sessions, user=cfg.user)
        await conn.wait_closed()


async def run_agent(cfg: AgentConfig, plan: Plan) -> int:
    """Run sessions until cancelled; return 1 if the first one was refused."""
    await bind_udp_listeners(plan, cfg.idle_timeout_ms)
    attempt = 0
    while True:
        try:
            await session(cfg, plan)
            attempt = 0
            reason = "connection closed"
        except (asyncssh.PermissionDenied, asyncssh.HostKeyNotVerifiable, AgentRefused) as exc:
            if plan.sessions == 0:
                print(f"quotarelay agent: {_describe(exc)}", file=sys.stderr, flush=True)
                return 1
            reason = _describe(exc)
        except (OSError, asyncssh.Error) as exc:
            reason = _describe(exc)
        delay_ms = backoff_ms(  # jitter: agents do not stampede
            attempt, first_ms=INITIAL_BACKOFF_MS, cap_ms=cfg.backoff_max_ms, draw=random.random()
        )
        emit("agent_disconnected", reason=reason, retry_in_ms=delay_ms)
        await asyncio.sleep(delay_ms / 1000)
        attempt += 1


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.PermissionDenied):
        return "the relay refused the login (agent id or key)"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return f"the relay's host key is not in known_hosts: {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
