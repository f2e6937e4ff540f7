"""The traffic bucket a relay holds for one paying agent.

Invariants (checked by the property tests):
- `granted >= charged >= used >= 0`; `remaining = granted - used` is never negative.
- No meter ever passes a byte that was not granted: a meter passes bytes only out
  of its `allowance`, and allowances are carved out of `granted - charged`.
- `used` equals the sum of `passed` over every meter that ever attached.
- Waiters are served first-in first-out; while any meter waits, no other meter
  gets fresh bytes, so a grant cannot be eaten by one stream while others starve.
- Bytes handed to a waiter (`owed`) belong to its held chunk: taking back idle
  headroom never touches them, even if another stream reads before it flushes.

The hot path never calls in here: a pump subtracts from `Meter.allowance` and
adds to `Meter.passed` itself, and calls `Bucket.take` only when a chunk does not
fit in the allowance it holds. `take` then hands out the chunk plus a slice of
headroom, smaller as the bucket empties, so near the end every byte is exact.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import NamedTuple

from quota.core.errors import InvalidValue

DEFAULT_SLICE = 256 * 1024


class BucketState(enum.Enum):
    ACTIVE = "active"  # bytes may pass
    DEPLETED = "depleted"  # nothing left; streams wait for a grant
    INACTIVE = "inactive"  # no subscription: nothing passes whatever is granted


class Meter:
    """One direction of one stream, drawing on a bucket.

    `allowance` is headroom already charged to the bucket that the pump may pass
    without asking (and that the bucket may take back while it is unused);
    `owed` is bytes handed to this meter for the chunk it holds, which only
    `flush` spends and nothing takes back; `passed` counts bytes forwarded;
    `need` is what a waiting meter still lacks. `owner` is the relay's object for
    the stream side, opaque here.
    """

    __slots__ = ("allowance", "bucket", "need", "owed", "owner", "passed", "waiting")

    def __init__(self, bucket: Bucket, owner: object) -> None:
        self.bucket = bucket
        self.owner = owner
        self.allowance = 0
        self.owed = 0
        self.passed = 0
        self.need = 0
        self.waiting = False

    def flush(self, held: int) -> int:
        """How many of `held` bytes may be forwarded now, after a wake; counted as passed."""
        k = min(held, self.owed)
        self.owed -= k
        self.passed += k
        return k


class Take(NamedTuple):
    passed: int  # bytes of the chunk that may be forwarded now (already counted)
    wakes: tuple[Meter, ...]  # other meters that were handed bytes and may flush


class Bucket:
    """Granted and used bytes of one agent on this relay, and the meters drawing on it."""

    def __init__(
        self, agent_id: str, *, low_water: int = 0, slice_bytes: int = DEFAULT_SLICE
    ) -> None:
        if low_water < 0 or slice_bytes <= 0:
            raise InvalidValue("low_water must be >= 0 and slice_bytes > 0")
        self.agent_id = agent_id
        self.low_water = low_water
        self.slice_bytes = slice_bytes
        self.granted = 0
        self.charged = 0  # bytes handed to meters: passed plus outstanding allowances
        self.inactive = False
        # A lease is on its way when the bucket runs dry: billing grants this relay
        # leases and its last answer to an ask gave all that was asked. False once
        # it gave less (the account can pay for nothing more), and always on a relay
        # without a billing API. Says only why streams wait (quota.core.stream.held_reason).
        self.can_pay = False
        # a dict, not a set: at 20,000 meters a set's table is 2 MB, a dict's 0.7 MB
        self._meters: dict[Meter, None] = {}
        self._waiters: deque[Meter] = deque()
        self._detached_passed = 0
        # Datagram bytes refused since the last grant: UDP cannot wait, so a dropped
        # datagram is the only sign an agent with UDP tunnels alone needs bytes.
        self.dropped_want = 0

    # -- views -------------------------------------------------------------------

    @property
    def used(self) -> int:
        return self.charged - sum(m.allowance + m.owed for m in self._meters)

    @property
    def remaining(self) -> int:
        return self.granted - self.used

    @property
    def free(self) -> int:
        """Granted bytes not yet handed to any meter."""
        return self.granted - self.charged

    @property
    def passed_total(self) -> int:
        """Bytes passed by every meter that ever attached (equals `used`)."""
        return self._detached_passed + sum(m.passed for m in self._meters)

    @property
    def state(self) -> BucketState:
        if self.inactive:
            return BucketState.INACTIVE
        if self._waiters or self.remaining == 0:
            return BucketState.DEPLETED
        return BucketState.ACTIVE

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def short(self) -> int:
        """Bytes the waiting meters still lack, and datagram bytes refused since the last grant."""
        return sum(m.need for m in self._waiters) + self.dropped_want

    @property
    def meters(self) -> int:
        return len(self._meters)

    def wants_grant(self) -> bool:
        """True when remaining bytes fell below the low-water mark (ask for more now).

        Checked on the byte path at every slice: `free` (never above `remaining`)
        answers without walking the meters unless the bucket is near low water.
        """
        if self.inactive:
            return False
        if self._waiters or self.dropped_want:
            return True
        return self.granted - self.charged < self.low_water and self.remaining < self.low_water

    # -- meters ------------------------------------------------------------------

    def attach(self, owner: object) -> Meter:
        meter = Meter(self, owner)
        self._meters[meter] = None
        return meter

    def detach(self, meter: Meter) -> tuple[Meter, ...]:
        """Drop a meter (its stream closed); its unused allowance goes back to the pool."""
        if meter not in self._meters:
            return ()
        del self._meters[meter]
        self._detached_passed += meter.passed
        self.charged -= meter.allowance + meter.owed
        meter.allowance = meter.owed = 0
        if meter.waiting:
            self._waiters.remove(meter)
            meter.waiting = False
            meter.need = 0
        return self._serve_waiters()

    # -- the slow path -------------------------------------------------------------

    def take(self, meter: Meter, n: int) -> Take:
        """Let up to `n` bytes of a chunk pass; the rest makes the meter wait.

        Returns how many bytes pass now (counted in `meter.passed`) and the other
        meters woken because bytes were taken back from idle allowances.
        """
        if n <= 0:
            raise InvalidValue(f"take needs a positive byte count, got {n}")
        if meter.waiting:
            meter.need += n
            return Take(0, ())
        passed = min(meter.allowance, n)
        meter.allowance -= passed
        short = n - passed
        wakes: tuple[Meter, ...] = ()
        if short and not self.inactive:
            if short > self.free:
                wakes = self._reclaim()
            if not self._waiters:
                fresh = min(short, self.free)
                self.charged += fresh
                passed += fresh
                short -= fresh
        if short:
            meter.need = short
            meter.waiting = True
            self._waiters.append(meter)
        elif not self.inactive:
            self._give_slice(meter)
        meter.passed += passed
        return Take(passed, wakes)

    def take_whole(self, meter: Meter, n: int) -> bool:
        """All or nothing, for a datagram: pass `n` bytes now (counted), or none.

        Never waits and never splits: UDP cannot be held back, so a datagram that
        does not fit is dropped by the caller and nothing is counted. It draws on
        the meter's allowance and on free bytes; while other meters wait it draws
        on its allowance only, so it never takes a grant from a waiting stream.
        """
        if n < 0:
            raise InvalidValue(f"take_whole needs a byte count >= 0, got {n}")
        if self.inactive or meter.waiting:
            return False
        if n > meter.allowance:
            if self._waiters:
                self._refused(n)
                return False
            if n > meter.allowance + self.free:
                self._reclaim_quietly()  # no waiters, so nobody is owed a wake
            if n > meter.allowance + self.free:
                self._refused(n)
                return False
            fresh = n - meter.allowance
            self.charged += fresh
            meter.allowance += fresh
        meter.allowance -= n
        meter.passed += n
        if meter.allowance == 0:
            self._give_slice(meter)
        return True

    def _refused(self, n: int) -> None:
        """A datagram of `n` bytes did not fit: remember the demand (capped: a flood of
        refused datagrams asks a lease of the usual size, not one of its own size)."""
        self.dropped_want = min(self.slice_bytes, self.dropped_want + n)

    def grant(self, nbytes: int) -> tuple[Meter, ...]:
        """Add granted bytes; returns the meters that now hold bytes to flush."""
        if nbytes < 0:
            raise InvalidValue(f"a grant cannot be negative: {nbytes}")
        self.granted += nbytes
        self.dropped_want = 0
        return self._serve_waiters()

    def revoke(self, nbytes: int) -> int:
        """Take back up to `nbytes` of granted, unused bytes; returns how many."""
        if nbytes < 0:
            raise InvalidValue(f"a revoke cannot be negative: {nbytes}")
        self._reclaim_quietly()
        back = min(nbytes, self.free)
        self.granted -= back
        return back

    def set_inactive(self, inactive: bool) -> tuple[Meter, ...]:
        """Inactive: nothing passes, not even held allowances. Active again: serve waiters."""
        self.inactive = inactive
        if inactive:
            self._reclaim_quietly()
            return ()
        return self._serve_waiters()

    # -- internals -------------------------------------------------------------------

    def _give_slice(self, meter: Meter) -> None:
        """Hand an extra slice of headroom, small enough that idle slices stay cheap."""
        if self._waiters:
            return
        extra = min(self.slice_bytes, self.free // (2 * len(self._meters) + 2))
        if extra > 0:
            meter.allowance += extra
            self.charged += extra

    def _reclaim_quietly(self) -> None:
        for other in self._meters:
            self.charged -= other.allowance
            other.allowance = 0

    def _reclaim(self) -> tuple[Meter, ...]:
        self._reclaim_quietly()
        return self._serve_waiters()

    def _serve_waiters(self) -> tuple[Meter, ...]:
        if self.inactive:
            return ()
        woken: list[Meter] = []
        while self._waiters and self.free > 0:
            meter = self._waiters[0]
            give = min(meter.need, self.free)
            self.charged += give
            meter.owed += give
            meter.need -= give
            woken.append(meter)
            if meter.need == 0:
                self._waiters.popleft()
                meter.waiting = False
        return tuple(woken)
