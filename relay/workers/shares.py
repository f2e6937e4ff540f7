"""Per-agent fair shares of a relay of workers, counted by the supervisor for the relay as a whole.

An agent's SSH connections, endpoints and public ports may sit in different
workers; their limits (`[shares]`, the agent's registry entry) are the relay's.
Shares counted within one connection, tunnel or source (channels, streams per
tunnel, connections or flows per source) live in one worker and stay its own.

Invariants:
- Every per-agent share a worker holds is also held for it at the supervisor's
  `ShareDesk`, or is being asked for: so the relay never holds more than the
  limit in force. A worker that dies gives back all it held there.
- A take that may wait (a tunnel request) asks first (`ask`) and is refused
  before anything opens; a take that cannot wait (a login) is counted in the
  worker at once and asked for after: a refusal then ends what took it
  (`on_refused`), with the same message and `refused` record as ever.
- Every share asked for and granted goes back exactly once: by `release`, by
  `settle` when the take it was asked for did not happen, or by `lost`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable, Hashable

from quota.core.shares import Share, ShareLimits
from relay.errors import Refused
from relay.hub.shares import FairShares, Held
from relay.registry import Agent, Registry
from relay.workers.link import Link
from relay.workers.messages import IpcError, ReleaseShare, ShareAnswer, TakeShare

ASK_TIMEOUT_S = 10.0


class ShareDesk:
    """The supervisor's count of every worker's per-agent shares."""

    def __init__(self, defaults: ShareLimits, registry: Registry) -> None:
        self.shares = FairShares(defaults)
        self.registry = registry
        self.held: dict[int, Counter[tuple[Share, str]]] = {}  # worker -> what it holds

    def take(self, key: int, ask: TakeShare) -> ShareAnswer:
        share = _share(ask.share)
        agent = self.registry.get(ask.agent_id)
        if agent is None:
            return _answer(ask, ok=False, message=f"unknown agent {ask.agent_id}")
        try:
            self.shares.take(share, agent)
        except Refused as exc:
            return _answer(ask, ok=False, message=str(exc), cause=exc.cause or "")
        self.held.setdefault(key, Counter())[(share, ask.agent_id)] += 1
        return _answer(ask, ok=True)

    def release(self, key: int, back: ReleaseShare) -> None:
        held = self.held.get(key)
        what = (_share(back.share), back.agent_id)
        if held is not None and held[what] > 0:  # a share refused here is not given back
            held[what] -= 1
            self._release(*what)

    def lost(self, key: int) -> None:
        for (share, agent_id), n in self.held.pop(key, Counter()).items():
            for _ in range(n):
                self._release(share, agent_id)

    def _release(self, share: Share, agent_id: str) -> None:
        self.shares.release(Held(share=share, agent_id=agent_id, scope=None))


def _answer(ask: TakeShare, *, ok: bool, message: str = "", cause: str = "") -> ShareAnswer:
    return ShareAnswer(
        req=ask.req, share=ask.share, agent_id=ask.agent_id, ok=ok, message=message, cause=cause
    )


def _share(value: str) -> Share:
    try:
        share = Share(value)
    except ValueError:
        raise IpcError(f"no share {value!r}") from None
    if not share.per_agent:
        raise IpcError(f"share {value!r} is a worker's own")
    return share


class RelayWideShares(FairShares):
    """A worker's fair shares: per-agent ones are asked of the supervisor's desk."""

    def __init__(self, defaults: ShareLimits, link: Link) -> None:
        super().__init__(defaults)
        self.link = link
        self._ids = itertools.count(1)
        self._asks: dict[int, asyncio.Future[ShareAnswer]] = {}
        self._credit: Counter[tuple[Share, str]] = Counter()  # granted, not yet taken here
        self._after: dict[int, Held] = {}  # req -> a share taken before it was asked for
        self._void: dict[int, Held] = {}  # id -> a share refused after it was taken
        self._late: set[int] = set()  # asks given up on: a late grant goes straight back
        self.on_refused: Callable[[Held, Refused], None] | None = None

    async def ask(self, share: Share, agent_id: str) -> None:
        if not share.per_agent:
            return
        req = next(self._ids)
        answer = self._asks[req] = asyncio.get_running_loop().create_future()
        self.link.send(TakeShare(req=req, share=share.value, agent_id=agent_id))
        try:
            got = await asyncio.wait_for(answer, ASK_TIMEOUT_S)
        except TimeoutError:
            self._late.add(req)
            raise Refused("the relay did not answer in time; try again") from None
        finally:
            self._asks.pop(req, None)
        if not got.ok:
            raise Refused(got.message, cause=got.cause or None)
        self._credit[(share, agent_id)] += 1

    def settle(self, share: Share, agent_id: str) -> None:
        key = (share, agent_id)
        if self._credit[key] > 0:
            self._credit[key] -= 1
            self.link.send(ReleaseShare(share=share.value, agent_id=agent_id))
        if not self._credit[key]:
            del self._credit[key]

    def take(self, share: Share, agent: Agent, scope: Hashable | None = None) -> Held:
        held = super().take(share, agent, scope)
        if share.per_agent:
            key = (share, agent.agent_id)
            if self._credit[key] > 0:
                self._credit[key] -= 1
            else:
                req = next(self._ids)
                self._after[req] = held
                self.link.send(TakeShare(req=req, share=share.value, agent_id=agent.agent_id))
            if not self._credit[key]:
                del self._credit[key]
        return held

    def release(self, held: Held) -> None:
        if self._void.pop(id(held), None) is held:
            return  # refused by the desk: given back here already
        super().release(held)
        for req, after in list(self._after.items()):
            if after is held:
                del self._after[req]
        if held.share.per_agent:
            self.link.send(ReleaseShare(share=held.share.value, agent_id=held.agent_id))

    def answered(self, answer: ShareAnswer) -> None:
        asked = self._asks.get(answer.req)
        if asked is not None:
            if not asked.done():
                asked.set_result(answer)
            return
        if answer.req in self._late:
            self._late.discard(answer.req)
            if answer.ok:
                self.link.send(ReleaseShare(share=answer.share, agent_id=answer.agent_id))
            return
        held = self._after.pop(answer.req, None)
        if held is None or answer.ok:
            return
        super().release(held)
        self._void[id(held)] = held
        if self.on_refused is not None:
            self.on_refused(held, Refused(answer.message, cause=answer.cause or None))
