"""Sub-leases: one relay's lease for an agent, shared out among the relay's workers.

A worker is to the relay's quota host what a relay is to billing: it holds a
sub-lease of the agent's bucket, passes bytes only out of it, reports what it
used and asks for more at low water. The quota host keeps, per agent, a `pool`
(bytes the relay holds and no worker does) and per worker cumulative totals
(`quota.core.lease.LeaseTotals`, granted / used / returned).

Invariants (checked by the property tests):
- Conservation: `added - revoked == pool + sum(outstanding of live workers)
  + used of every worker + lost`, at every step; nothing is negative.
- A sub-lease is cut by the rule billing applies to leases across relays
  (`quota.core.lease.grant_size`): a worker never gets more than the pool, so
  the sum of what workers may pass never exceeds what the relay holds, and a
  worker that passes only out of its sub-lease cannot overshoot the grant.
- Wants are served first-in first-out; a want the pool cannot cover waits, and
  the workers holding unused bytes are asked to give them back (a recall), so a
  grant is not kept idle in one worker while another one's streams wait.
- A worker that dies loses its outstanding bytes (`lost`): they may have passed
  without being reported, so they are never handed out again. Its reported use
  stays counted.
No I/O, no clock.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from quota.core.errors import InvalidValue
from quota.core.lease import LeaseTotals, grant_size

FOREVER = 2**62  # sub-leases do not expire; the relay's own lease does (quota.core.lease)


@dataclass(frozen=True, slots=True, kw_only=True)
class SubGrant:
    """Bytes to add to one worker's sub-lease of one agent."""

    worker: int
    agent_id: str
    nbytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Served:
    """What a step decided: grants to send, and workers asked to give back unused bytes."""

    grants: tuple[SubGrant, ...] = ()
    recalls: tuple[int, ...] = ()


def want_size(*, short: int, remaining: int, low_water: int, chunk: int) -> int:
    # the `need` part of such a want is `short`
    """What a worker asks for: nothing above low water, else what waits plus a chunk of headroom."""
    if min(short, remaining, low_water, chunk) < 0:
        raise InvalidValue("short, remaining, low_water and chunk must not be negative")
    if short == 0 and remaining >= low_water:
        return 0
    return short + max(0, chunk - remaining)


class SubLeases:
    """One agent's bytes on one relay, shared out to its workers."""

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self.pool = 0
        self.added = 0
        self.revoked = 0
        self.lost = 0
        self.used_dead = 0  # reported use of workers that are gone
        self.shares: dict[int, LeaseTotals] = {}
        # worker -> (bytes still wanted, of which streams wait for)
        self._wants: OrderedDict[int, tuple[int, int]] = OrderedDict()

    # -- views ---------------------------------------------------------------------

    def outstanding(self, worker: int) -> int:
        share = self.shares.get(worker)
        return 0 if share is None else share.remaining()

    @property
    def outstanding_all(self) -> int:
        return sum(s.remaining() for s in self.shares.values())

    @property
    def used(self) -> int:
        return self.used_dead + sum(s.used_total for s in self.shares.values())

    @property
    def short(self) -> int:
        """Bytes wanted by workers that the pool could not cover yet."""
        return sum(want for want, _ in self._wants.values())

    @property
    def need(self) -> int:
        """Of `short`, what streams wait for (the rest is headroom): the relay's own shortfall."""
        return sum(need for _, need in self._wants.values())

    def check(self) -> None:
        """Raise if the conservation invariant does not hold (for tests and simulations)."""
        held = self.pool + self.outstanding_all + self.used + self.lost
        if self.pool < 0 or held != self.added - self.revoked:
            raise InvalidValue(f"sub-leases of {self.agent_id} do not add up")

    # -- the relay's lease -------------------------------------------------------------

    def add(self, nbytes: int) -> Served:
        """The relay got `nbytes` more for this agent: serve waiting wants first."""
        if nbytes < 0:
            raise InvalidValue("a grant must not be negative")
        self.added += nbytes
        self.pool += nbytes
        return Served(grants=self._serve())

    def revoke(self, nbytes: int) -> int:
        """Take back up to `nbytes` from the pool (what no worker holds); returns how many."""
        if nbytes < 0:
            raise InvalidValue("a revoke must not be negative")
        back = min(nbytes, self.pool)
        self.pool -= back
        self.revoked += back
        return back

    # -- what workers say --------------------------------------------------------------

    def want(self, worker: int, nbytes: int, *, need: int = 0) -> Served:
        """`worker` asks for `nbytes` more, `need` of them for streams that wait.

        What the pool lacks waits. If streams wait (`need`), the workers holding
        bytes with no stream of theirs waiting are asked to give them back.
        """
        if nbytes < 0 or not 0 <= need <= nbytes:
            raise InvalidValue("a want must not be negative, nor need more than it wants")
        self.shares.setdefault(worker, LeaseTotals(valid_until=FOREVER))
        if nbytes == 0:
            return Served()
        old = self._wants.get(worker, (0, 0))
        self._wants[worker] = (max(old[0], nbytes), max(old[1], need))
        grants = self._serve()
        if worker not in self._wants or self._wants[worker][1] == 0:
            return Served(grants=grants)
        holders = tuple(
            w
            for w, s in self.shares.items()
            if w != worker and s.remaining() and self._wants.get(w, (0, 0))[1] == 0
        )
        return Served(grants=grants, recalls=holders)

    def report(self, worker: int, used_total: int) -> None:
        """`worker`'s cumulative use of this agent's bytes (never more than it was handed)."""
        share = self.shares.setdefault(worker, LeaseTotals(valid_until=FOREVER))
        used = used_total - share.used_total
        if used < 0 or used_total > share.granted_total - share.returned_total:
            raise InvalidValue(f"worker {worker} reported {used_total} used, beyond its sub-lease")
        self.shares[worker] = share.report(used=used, returned=0)

    def give_back(self, worker: int, nbytes: int, *, revoke: int = 0) -> Served:
        """`worker` returns `nbytes` it holds unused; waiting wants are served from them.

        Up to `revoke` bytes of the pool are taken back first (an operator's revoke,
        an expired lease), so they never reach another worker. Giving back cancels
        the headroom the worker still wanted (not what its streams need).
        """
        share = self.shares.get(worker)
        if nbytes < 0 or share is None or nbytes > share.remaining():
            raise InvalidValue(f"worker {worker} cannot give back {nbytes} bytes")
        self.shares[worker] = share.report(used=0, returned=nbytes)
        need = self._wants.pop(worker, (0, 0))[1]
        if need:
            self._wants[worker] = (need, need)
        self.pool += nbytes
        self.revoke(revoke)
        return Served(grants=self._serve())

    def worker_lost(self, worker: int) -> Served:
        """`worker` died: its unreported bytes are written off, never handed out again."""
        share = self.shares.pop(worker, None)
        self._wants.pop(worker, None)
        if share is not None:
            self.lost += share.remaining()
            self.used_dead += share.used_total
        return Served(grants=self._serve())

    # -- internals -------------------------------------------------------------------

    def _serve(self) -> tuple[SubGrant, ...]:
        """Streams that wait first, in order of asking; then headroom, in the same order."""
        given: dict[int, int] = {}
        for needs_only in (True, False):
            for worker, (want, need) in list(self._wants.items()):
                part = need if needs_only else want
                give = grant_size(want=part, capacity=self.pool, outstanding=0)
                if give == 0:
                    continue
                self.pool -= give
                self.shares[worker] = self.shares[worker].grant(give)
                given[worker] = given.get(worker, 0) + give
                if give == want:
                    del self._wants[worker]
                else:
                    self._wants[worker] = (want - give, max(0, need - give))
        return tuple(SubGrant(worker=w, agent_id=self.agent_id, nbytes=n) for w, n in given.items())
