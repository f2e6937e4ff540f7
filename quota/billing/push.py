"""The push channel: relays hold a WebSocket and hear at once what changed.

Invariants:
- `PushHub.publish` never blocks and never raises: billing calls it only after
  a transaction committed, and a slow relay can never hold billing back.
- Each connection has a bounded queue. A relay that falls so far behind that
  its queue overflows, or takes longer than `SEND_TIMEOUT_S` to accept one
  message, is dropped (its connection aborted); it resyncs when it reconnects,
  so an event is never silently skipped on a live connection.
- Every connection first receives `hello`, then `changed` events in commit
  order. Closing the hub (server shutdown) closes every connection.
- A lease rides only on an event to the relay it was granted to (`publish`);
  other replicas hear the events without leases, and their relays ask.
- Replicas on one PostgreSQL database share their events: each committed
  operation announces its events in its own transaction (`announcements`,
  at most `FAN_OUT_IDS` agent ids each, well under PostgreSQL's 8000-byte
  NOTIFY payload), and every replica publishes what it `hear`s from the others
  to its own relays. A replica ignores its own announcements (it published
  them already, after its commit).
- aiohttp errors never leave this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Callable, Iterator, Mapping

import msgspec
import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from quota.contract import wire

log = structlog.get_logger("quota.billing")

QUEUE_MAX = 256
HEARTBEAT_S = 10.0
SEND_TIMEOUT_S = 10.0  # a relay that takes longer to accept one message is dropped
FAN_OUT_IDS = 100


class Subscriber:
    """One relay connection's queue of events; `None` in the queue means: stop."""

    def __init__(self, relay_id: str, queue_max: int, on_drop: Callable[[], None]) -> None:
        self.relay_id = relay_id
        self.dropped = False
        self.sending = False  # a message is being written (and may be stuck on the peer)
        self._queue: asyncio.Queue[wire.PushEvent | None] = asyncio.Queue(queue_max)
        self._on_drop = on_drop

    def offer(self, event: wire.PushEvent) -> None:
        if self.dropped:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            log.warning("billing_push_overflow", relay_id=self.relay_id)
            self.drop()

    def drop(self) -> None:
        """Cut the connection now (a stuck write fails at once); the relay will resync."""
        self.stop()
        self._on_drop()

    def stop(self) -> None:
        """End this subscription: the sender sees `None` next (queued events are dropped)."""
        self.dropped = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    @property
    def unsent(self) -> int:
        return 0 if self.dropped else self._queue.qsize() + int(self.sending)

    async def next(self) -> wire.PushEvent | None:
        return await self._queue.get()


class PushHub:
    """The set of connected relays; `publish` fans an event out to all of them."""

    def __init__(self, queue_max: int = QUEUE_MAX) -> None:
        self.queue_max = queue_max
        self.origin = secrets.token_hex(8)  # this process, among the replicas
        self._subs: set[Subscriber] = set()

    @property
    def connected(self) -> int:
        return len(self._subs)

    @property
    def unsent(self) -> int:
        """Events offered to connected relays and not yet written to their sockets."""
        return sum(sub.unsent for sub in self._subs)

    def publish(
        self, event: wire.PushEvent, leases: Mapping[str, list[wire.Lease]] | None = None
    ) -> None:
        """Offer `event` to every relay; a relay with `leases` of its agents gets them on it."""
        for sub in list(self._subs):
            own = [x for x in (leases or {}).get(sub.relay_id, []) if x.agent_id in event.agent_ids]
            sub.offer(msgspec.structs.replace(event, leases=own) if own else event)

    def announcements(self, event: wire.PushEvent) -> list[str]:
        """`event` as payloads for the other replicas, a slice of its agent ids each."""
        ids = event.agent_ids
        slices = [ids[at : at + FAN_OUT_IDS] for at in range(0, len(ids), FAN_OUT_IDS)] or [[]]
        return [
            json.dumps(
                {
                    "origin": self.origin,
                    "event": wire.dump(
                        wire.PushEvent(type=event.type, agent_ids=part, reason=event.reason)
                    ),
                }
            )
            for part in slices
        ]

    def hear(self, payload: str) -> None:
        """Publish an event another replica announced; our own and garbage are ignored."""
        try:
            note = json.loads(payload)
            if note["origin"] == self.origin:
                return
            event = wire.parse(wire.PushEvent, note["event"])
        except (ValueError, KeyError, TypeError, wire.WireError) as exc:
            log.warning("billing_fan_out_garbled", error=repr(exc))
            return
        self.publish(event)

    @contextlib.contextmanager
    def subscribe(self, relay_id: str, on_drop: Callable[[], None]) -> Iterator[Subscriber]:
        sub = Subscriber(relay_id, self.queue_max, on_drop)
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)

    def close_all(self) -> None:
        """Close every connection: politely when idle, at once when stuck in a write."""
        for sub in list(self._subs):
            if sub.sending:
                sub.drop()
            else:
                sub.stop()


async def _send_events(ws: web.WebSocketResponse, sub: Subscriber) -> None:
    try:
        while (event := await sub.next()) is not None:
            sub.sending = True
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await ws.send_json(wire.dump(event))
            sub.sending = False
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"resync")
    except TimeoutError:
        log.warning("billing_push_stuck", relay_id=sub.relay_id)
        sub.drop()
    except (ConnectionError, RuntimeError) as exc:  # aborted or closed under us
        log.info("billing_push_lost", relay_id=sub.relay_id, error=repr(exc))


async def serve_events(request: web.Request, hub: PushHub, relay_id: str) -> web.StreamResponse:
    """Upgrade to a WebSocket and stream events until either side goes away."""
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=4096)
    transport = request.transport

    def abort() -> None:
        if transport is not None:
            transport.abort()  # a stalled send fails at once instead of waiting for the peer

    await ws.prepare(request)
    log.info("billing_push_connected", relay_id=relay_id)
    with hub.subscribe(relay_id, abort) as sub:
        sub.offer(wire.PushEvent(type="hello"))
        async with asyncio.TaskGroup() as tasks:
            sender = tasks.create_task(_send_events(ws, sub), name=f"push-{relay_id}")
            async for msg in ws:  # relays send nothing; this notices close and pongs
                if msg.type is WSMsgType.ERROR:
                    break
            sender.cancel()
    log.info("billing_push_disconnected", relay_id=relay_id, dropped=sub.dropped)
    return ws
