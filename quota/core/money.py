"""Coin as integer millicoins, and exact pricing with carried remainders.

Invariants:
- Money is an `int` of millicoins (1 coin = 1000 millicoins); no float ever
  appears, not even while parsing ("0.1" -> 100).
- `charge_with_carry` never loses or invents value: for any split of a quantity
  into parts, the charges plus the final carry equal the charge of the whole,
  so a thousand 1 MB charges cost exactly what one 1 GB charge costs.
- The carry is the unbilled fraction of a millicoin, kept as a numerator over
  the rate's denominator: `0 <= carry < denominator`.
- Balances, amounts and byte counters never exceed `MAX_MILLICOINS` /
  `MAX_COUNTER` (2**62, the maximum of the wire schema and of the OpenAPI
  document); `checked_add` refuses a sum past it with `OverLimit` naming the limit,
  so no Python int ever outgrows a column or a documented field.
- A plan change never refunds included traffic already used: `plan_change_credit`
  is at most the prorated price and at most the price of the bytes still unused
  beyond the elapsed share, valued at the catalogue's price per byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from quota.core.errors import InvalidValue
from quota.core.units import check_length

MILLI = 1000
# The wire schema's integer maximum (quota.contract.wire.MAX_INT, the OpenAPI `maximum`):
# every balance, amount and counter the billing API stores or answers stays within it.
MAX_MILLICOINS = 2**62
MAX_COUNTER = 2**62
MAX_MONEY = MAX_MILLICOINS
GB = 10**9
SECONDS_PER_MONTH = 30 * 86_400
MS_PER_MONTH = SECONDS_PER_MONTH * 1000

# re.ASCII: `\d` would otherwise take full-width and other Unicode digits.
_COIN_RE = re.compile(r"^\s*([0-9]+)(?:\.([0-9]{1,3}))?\s*$", re.ASCII)


class OverLimit(InvalidValue):
    """An operation would take a balance or a counter past its documented maximum."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(f"{what} would exceed its maximum of {limit}")
        self.what = what
        self.limit = limit


def checked_add(value: int, delta: int, *, what: str, limit: int = MAX_MILLICOINS) -> int:
    """`value + delta`, refused with OverLimit when it leaves 0..limit."""
    total = value + delta
    if total > limit:
        raise OverLimit(what, limit)
    if total < 0:
        raise InvalidValue(f"{what} would fall below zero ({value} + {delta})")
    return total


def parse_coin(text: str | int) -> int:
    """Return the millicoins `text` names ("19" -> 19000, "0.1" -> 100); ints are coins."""
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise InvalidValue(f'not an amount of coin: {text!r} (write "19" or "0.125")')
    if isinstance(text, int):
        value = text * MILLI
    else:
        check_length(text, "amount of coin")
        match = _COIN_RE.match(text)
        if match is None:
            raise InvalidValue(
                f'not an amount of coin: {text!r} (write "19" or "0.125"; 3 decimals at most)'
            )
        value = int(match.group(1)) * MILLI + int((match.group(2) or "").ljust(3, "0"))
    if value < 0 or value > MAX_MONEY:
        raise InvalidValue(f"amount out of range: {text!r}")
    return value


def format_coin(millicoins: int) -> str:
    """Render millicoins as coin with 3 decimals (12000 -> "12.000", -5 -> "-0.005")."""
    sign = "-" if millicoins < 0 else ""
    whole, frac = divmod(abs(millicoins), MILLI)
    return f"{sign}{whole}.{frac:03d}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Rate:
    """A price of `price` millicoins per `per` units (bytes, seconds)."""

    price: int
    per: int

    def __post_init__(self) -> None:
        if self.price < 0 or self.per <= 0:
            raise InvalidValue(f"bad rate: {self.price} per {self.per}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Charge:
    """What a quantity costs now (`amount`) and the fraction carried to the next charge."""

    amount: int
    carry: int


def charge_with_carry(quantity: int, rate: Rate, carry: int) -> Charge:
    """Charge `quantity` units at `rate`, adding and returning the sub-millicoin carry."""
    if quantity < 0 or not 0 <= carry < rate.per:
        raise InvalidValue(f"bad charge: quantity={quantity} carry={carry}")
    amount, rest = divmod(quantity * rate.price + carry, rate.per)
    return Charge(amount=amount, carry=rest)


def units_affordable(balance: int, rate: Rate, carry: int) -> int:
    """The most units whose charge (with `carry`) fits in `balance` millicoins."""
    if rate.price == 0:
        return MAX_MONEY
    # charge(q) = (q*price + carry) // per <= balance  <=>  q*price + carry < (balance+1)*per
    return max(0, ((balance + 1) * rate.per - carry - 1) // rate.price)


def metered_rate(price_per_gb: int) -> Rate:
    """The metered traffic rate: `price_per_gb` millicoins per 10**9 bytes."""
    return Rate(price=price_per_gb, per=GB)


def tunnel_time_rate(price_per_month: int) -> Rate:
    """The pay-as-you-go rate: `price_per_month` millicoins per 30 days of tunnel time."""
    return Rate(price=price_per_month, per=SECONDS_PER_MONTH)


def check_daily_exact(price_per_month: int) -> None:
    """Refuse a monthly tunnel price whose day is not a whole number of millicoins.

    With such a price every full day costs exactly `price_per_month // 30`, whatever
    the carry left by earlier partial days, so no two equal days cost differently.
    """
    if price_per_month % 30:
        raise InvalidValue(
            f"a monthly tunnel-time price must be a multiple of 0.030 coin so each day "
            f"costs whole millicoins; {format_coin(price_per_month)} is not"
        )


def prorate_credit(price: int, period_ms: int, remaining_ms: int) -> int:
    """Credit for the unused `remaining_ms` of a period that cost `price` (rounded down)."""
    if period_ms <= 0 or price < 0:
        raise InvalidValue(f"bad proration: price={price} period={period_ms}")
    remaining_ms = min(max(remaining_ms, 0), period_ms)
    return price * remaining_ms // period_ms


def monthly_price(price: int, period_ms: int) -> int:
    """The price of a plan normalised to 30 days (rounded down)."""
    return price * MS_PER_MONTH // period_ms


def plan_change_credit(
    *,
    price: int,
    period_ms: int,
    remaining_ms: int,
    included: int,
    included_left: int,
    byte_price: Rate,
) -> int:
    """Credit for the unused part of a plan left early, without refunding used traffic.

    The prorated price (`prorate_credit`) minus the value, at `byte_price`, of the
    included bytes used beyond the share of the elapsed time; never below zero.
    The deduction rounds up and the proration down, so the credit never exceeds
    either. With `byte_price` at or below the plan's own price per byte, no
    sequence of plan changes buys a byte below `byte_price`.
    """
    if included < 0 or not 0 <= included_left <= included:
        raise InvalidValue(f"bad plan bucket: {included_left} of {included} bytes left")
    credit = prorate_credit(price, period_ms, remaining_ms)
    elapsed_ms = period_ms - min(max(remaining_ms, 0), period_ms)
    share = included * elapsed_ms // period_ms  # bytes the elapsed time paid for (down: never more)
    beyond = max(0, included - included_left - share)
    value = -(-(beyond * byte_price.price) // byte_price.per)
    return max(0, credit - value)
