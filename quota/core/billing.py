"""Billing rules: the plan catalogue, traffic draw order, auto top-up, renewals.

Invariants:
- Traffic is drawn from the included bucket first, then from bought packages,
  then (only if the agent allows it and the account is not frozen) from the
  balance at the metered rate; whatever cannot be paid is `unbilled`, never a
  negative balance or a negative bucket.
- Auto top-up buys the fewest packages that cover the shortfall (so it never
  buys twice for one shortfall), never spends past the agent's limit for the
  period, and is not attempted again while blocked by a balance that could not
  pay (it waits for a deposit instead of retrying in a loop).
- A renewal charges one period at a time, each at most once; a period that
  cannot be paid lapses the agent and freezes the account.
All time values are integer milliseconds passed in by the caller.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from quota.core.errors import InvalidValue
from quota.core.money import (
    MS_PER_MONTH,
    Rate,
    charge_with_carry,
    check_daily_exact,
    monthly_price,
    parse_coin,
    units_affordable,
)
from quota.core.units import parse_duration_ms, parse_size

LOW_BALANCE_FACTOR = 2


class PlanKind(enum.StrEnum):
    PERIODIC = "periodic"  # a price per period, prepaid, with an included bucket
    TUNNEL_TIME = "tunnel_time"  # pay-as-you-go: a monthly price per tunnel, per second


NOT_METERED = "n/a"  # the state shown for an agent that pays nothing


class AgentRole(enum.StrEnum):
    CLIENT = "client"
    SUPPORT = "support"
    DUAL = "dual"

    @property
    def pays(self) -> bool:
        """Only agents that open tunnels need a plan."""
        return self is not AgentRole.SUPPORT

    def shown_state(self, bucket_state: str) -> str:
        """The state operators see: a support agent pays nothing, so its bucket's is `n/a`."""
        return bucket_state if self.pays else NOT_METERED

    @property
    def may_expose(self) -> bool:
        """May register endpoints and public ports (and pays for their traffic)."""
        return self is not AgentRole.SUPPORT

    @property
    def may_connect(self) -> bool:
        """May reach endpoints of its account."""
        return self is not AgentRole.CLIENT


class EntryKind(enum.StrEnum):
    DEPOSIT = "deposit"
    SUBSCRIPTION = "subscription"
    RENEWAL = "renewal"
    PACKAGE = "package"
    TRAFFIC = "traffic"  # bytes drawn from the bucket or packages (no coin)
    METERED_TRAFFIC = "metered_traffic"
    TUNNEL_TIME = "tunnel_time"
    PRORATION_CREDIT = "proration_credit"
    EXPIRY = "expiry"  # the included bucket of an ended period is dropped
    CORRECTION = "correction"


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    name: str
    kind: PlanKind
    price: int  # millicoins per period (per 30 days of tunnel time for TUNNEL_TIME)
    period_ms: int
    traffic: int  # included bytes per period

    @property
    def monthly(self) -> int:
        return monthly_price(self.price, self.period_ms)

    @property
    def prepaid(self) -> bool:
        return self.kind is PlanKind.PERIODIC


@dataclass(frozen=True, slots=True, kw_only=True)
class Package:
    name: str
    price: int
    traffic: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PriceList:
    """The plans and packages on sale, by name (the wire's `Catalogue` is its listing)."""

    plans: Mapping[str, Plan]
    packages: Mapping[str, Package]

    def plan(self, name: str) -> Plan:
        try:
            return self.plans[name]
        except KeyError:
            raise InvalidValue(f"unknown plan: {name!r}") from None

    def package(self, name: str) -> Package:
        try:
            return self.packages[name]
        except KeyError:
            raise InvalidValue(f"unknown package: {name!r}") from None

    def lowest_byte_price(self, metered: Rate) -> Rate:
        """The cheapest price per byte anything in the catalogue (or metering) sells at."""
        offers = [metered]
        offers += [Rate(price=p.price, per=p.traffic) for p in self.packages.values()]
        offers += [
            Rate(price=p.price, per=p.traffic)
            for p in self.plans.values()
            if p.kind is PlanKind.PERIODIC and p.traffic > 0
        ]
        return min(offers, key=lambda r: Fraction(r.price, r.per))


def _take(table: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in table:
        raise InvalidValue(f"{where}.{key}: missing")
    return table[key]


def _keyed(where: str, func: Any, value: Any) -> Any:
    try:
        return func(value)
    except InvalidValue as exc:
        raise InvalidValue(f"{where}: {exc}") from None


def _plan_from(table: Mapping[str, Any], where: str) -> Plan:
    unknown = set(table) - {"name", "kind", "price", "period", "traffic"}
    if unknown:
        raise InvalidValue(f"{where}: unknown keys {sorted(unknown)}")
    kind = _keyed(f"{where}.kind", PlanKind, table.get("kind", "periodic"))
    price = _keyed(f"{where}.price", parse_coin, _take(table, "price", where))
    if kind is PlanKind.TUNNEL_TIME:
        _keyed(f"{where}.price", check_daily_exact, price)
        period = MS_PER_MONTH
    else:
        period = _keyed(f"{where}.period", parse_duration_ms, _take(table, "period", where))
        if period <= 0:
            raise InvalidValue(f"{where}.period: must be longer than zero")
    traffic = _keyed(f"{where}.traffic", parse_size, table.get("traffic", 0))
    name = _take(table, "name", where)
    if not isinstance(name, str) or not name:
        raise InvalidValue(f"{where}.name: must be a non-empty string")
    return Plan(name=name, kind=kind, price=price, period_ms=period, traffic=traffic)


def _package_from(table: Mapping[str, Any], where: str) -> Package:
    unknown = set(table) - {"name", "price", "traffic"}
    if unknown:
        raise InvalidValue(f"{where}: unknown keys {sorted(unknown)}")
    name = _take(table, "name", where)
    if not isinstance(name, str) or not name:
        raise InvalidValue(f"{where}.name: must be a non-empty string")
    price = _keyed(f"{where}.price", parse_coin, _take(table, "price", where))
    traffic = _keyed(f"{where}.traffic", parse_size, _take(table, "traffic", where))
    if traffic <= 0:
        raise InvalidValue(f"{where}.traffic: must be more than zero bytes")
    return Package(name=name, price=price, traffic=traffic)


def catalogue_from_config(plans: Any, packages: Any) -> PriceList:
    """Build the catalogue from the `[[plans]]` and `[[packages]]` tables of a config."""
    built: dict[str, Any] = {"plans": {}, "packages": {}}
    for section, raw, parse in (
        ("plans", plans, _plan_from),
        ("packages", packages, _package_from),
    ):
        if not isinstance(raw, list):
            raise InvalidValue(f"{section}: must be an array of tables ([[{section}]])")
        for i, table in enumerate(raw):
            if not isinstance(table, Mapping):
                raise InvalidValue(f"{section}[{i}]: must be a table")
            item = parse(table, f"{section}[{i}]")
            if item.name in built[section]:
                raise InvalidValue(f"{section}[{i}].name: duplicate {item.name!r}")
            built[section][item.name] = item
    return PriceList(plans=built["plans"], packages=built["packages"])


@dataclass(frozen=True, slots=True, kw_only=True)
class Draw:
    """How `need` bytes of traffic are paid for."""

    from_bucket: int
    from_packages: int
    metered_bytes: int
    cost: int  # millicoins drawn from the balance for metered bytes
    carry: int  # metered carry after the charge
    unbilled: int  # bytes nobody could pay for


def _from_held(need: int, bucket: int, packages: int) -> tuple[int, int]:
    from_bucket = min(need, bucket)
    return from_bucket, min(need - from_bucket, packages)


def draw_held(need: int, bucket: int, packages: int) -> tuple[int, int] | None:
    """(from bucket, from packages) when they cover `need`: all `draw_traffic` draws then.

    None when they do not: the rest is metered or unbilled, ask `draw_traffic`.
    """
    if need < 0 or bucket < 0 or packages < 0:
        raise InvalidValue("traffic must not be negative")
    return _from_held(need, bucket, packages) if need <= bucket + packages else None


def roll_up(
    window: tuple[int, int, int], held: int, *, now: int, length: int
) -> tuple[int, int, int]:
    """Add `held` drawn bytes to an agent's open roll-up window `(used, start, end)`.

    A window opens at the first draw, aligned to the epoch (`now - now % length`),
    and takes every draw until its end; one that ended is closed into the ledger
    before any draw is added, so an open window here is always the current one.
    """
    used, start, end = window
    if held <= 0:
        return window
    if not used:
        start = now - now % length
        end = start + length
    return used + held, start, end


def draw_traffic(
    *, need: int, bucket: int, packages: int, metered: bool, balance: int, rate: Rate, carry: int
) -> Draw:
    """Split `need` bytes over bucket, packages, then the balance (if `metered`)."""
    if min(need, bucket, packages, balance) < 0:
        raise InvalidValue("traffic and balance must not be negative")
    from_bucket, from_packages = _from_held(need, bucket, packages)
    rest = need - from_bucket - from_packages
    metered_bytes = min(rest, units_affordable(balance, rate, carry)) if metered else 0
    charge = charge_with_carry(metered_bytes, rate, carry)
    return Draw(
        from_bucket=from_bucket,
        from_packages=from_packages,
        metered_bytes=metered_bytes,
        cost=charge.amount,
        carry=charge.carry,
        unbilled=rest - metered_bytes,
    )


class TopupOutcome(enum.Enum):
    NOT_NEEDED = "not_needed"
    BUY = "buy"
    LIMIT_REACHED = "limit_reached"
    BALANCE_SHORT = "balance_short"  # blocks further attempts until a deposit
    BLOCKED = "blocked"


@dataclass(frozen=True, slots=True, kw_only=True)
class Topup:
    outcome: TopupOutcome
    count: int = 0


def decide_topup(
    *,
    remaining: int,
    need: int,
    low_water: int,
    package: Package,
    limit: int,
    spent: int,
    balance: int,
    blocked: bool,
) -> Topup:
    """How many packages to buy so `need` bytes leave at least `low_water` bytes."""
    shortfall = need + low_water - remaining
    if shortfall <= 0:
        return Topup(outcome=TopupOutcome.NOT_NEEDED)
    if blocked:
        return Topup(outcome=TopupOutcome.BLOCKED)
    wanted = -(-shortfall // package.traffic)
    by_limit = wanted if package.price == 0 else max(0, limit - spent) // package.price
    by_balance = wanted if package.price == 0 else balance // package.price
    count = min(wanted, by_limit, by_balance)
    if count > 0:
        return Topup(outcome=TopupOutcome.BUY, count=count)
    if by_limit == 0:
        return Topup(outcome=TopupOutcome.LIMIT_REACHED)
    return Topup(outcome=TopupOutcome.BALANCE_SHORT)


class RenewalAction(enum.Enum):
    NONE = "none"  # the period is still running
    RENEW = "renew"
    EXPIRE = "expire"  # auto-renew off: the agent becomes inactive
    LAPSE = "lapse"  # auto-renew on but the balance cannot pay: inactive and frozen


def decide_renewal(
    *, active_until: int, now: int, auto_renew: bool, balance: int, price: int
) -> RenewalAction:
    """What to do with one periodic subscription whose period may have ended at `now`."""
    if active_until > now:
        return RenewalAction.NONE
    if not auto_renew:
        return RenewalAction.EXPIRE
    return RenewalAction.RENEW if balance >= price else RenewalAction.LAPSE


def low_balance_due(
    *, balance: int, monthly_total: int, last_notice_at: int | None, now: int, interval_ms: int
) -> bool:
    """A low-balance notice is due below twice the monthly plan total, once an interval."""
    if monthly_total <= 0 or balance >= LOW_BALANCE_FACTOR * monthly_total:
        return False
    return last_notice_at is None or now - last_notice_at >= interval_ms
