"""How the command line shows figures to people: sizes, coin, times, durations, tables.

Invariants:
- One module for every command (relay, streams, billing), so a size, an amount
  or a time reads the same wherever it is printed; `--json` never comes here.
- Nothing is rounded away: a size keeps its exact byte count beside the short
  form ("1500 (1.5K)"), coin keeps its three decimals ("5.000").
- A figure is known by its key (`FIELDS`), the API's own names: a key listed
  there is rendered by its kind wherever it appears; None is "-".
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from quota.core.errors import InvalidValue
from quota.core.money import format_coin
from quota.core.units import parse_duration_ms
from tools.errors import CliError

Render = Callable[[Any], str]
# (header, key, how to render the value; key "" renders the whole row); numbers right-aligned
Column = tuple[str, str, Render]


def size(nbytes: int) -> str:
    """Bytes for people, never rounded up: 1500 -> "1500 (1.5K)", 10**7 -> "10000000 (10M)"."""
    sign, n = ("-", -nbytes) if nbytes < 0 else ("", nbytes)
    for suffix, scale in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            whole, rest = divmod(n, scale)
            short = f"{whole}{suffix}" if rest == 0 else f"{whole}.{rest * 10 // scale}{suffix}"
            return f"{sign}{n} ({sign}{short})"
    return f"{sign}{n}"


def coin(millicoins: int) -> str:
    """Millicoins as coin with three decimals: 5000 -> "5.000", -500 -> "-0.500"."""
    return format_coin(millicoins)


def when(ms: int | None) -> str:
    """Epoch ms as "2026-11-23T16:46:03Z" (to the second), or "-" for none."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_when(text: str, now_ms: int, flag: str) -> int:
    """Epoch ms of a time a user typed: a duration ago ("30m", "2d") or ISO-8601 (naive = UTC)."""
    try:
        return now_ms - parse_duration_ms(text)
    except InvalidValue:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(
            f"{flag}: expected a time ago (30m, 2h, 1d) or an ISO-8601 time"
            f" (2026-11-23T16:00:00Z), got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def duration(ms: int) -> str:
    """A duration for people: "850ms", "12.3s", "4m05s", "2h03m", "30d00h"."""
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms // 1000}.{ms % 1000 // 100}s"
    minutes, seconds = divmod(ms // 1000, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def plain(value: Any) -> str:
    """Any other value: None is "-", a bool "yes"/"no", a list joined by commas."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(plain(v) for v in value) if value else "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={plain(v)}" for k, v in value.items()) if value else "-"
    return str(value)


def _typed(render: Callable[[int], str]) -> Render:
    def show(value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            return render(value)
        return plain(value)

    return show


SIZE, COIN, TIME, DURATION = _typed(size), _typed(coin), _typed(when), _typed(duration)

# The keys the APIs answer with, by the kind of figure they hold.
_COIN_KEYS = ("balance", "amount", "price", "balance_after", "topup_limit", "topup_spent")
_SIZE_KEYS = (
    *("bucket_bytes", "package_bytes", "traffic_remaining", "topup_below", "traffic_bytes"),
    *("used_bytes", "traffic", "granted", "used", "remaining"),
    *("bytes_up", "bytes_down", "bytes_dropped", "bytes_total"),
)
FIELDS: dict[str, Render] = {
    **dict.fromkeys((*_COIN_KEYS, "metered_price_per_gb"), COIN),
    **dict.fromkeys(_SIZE_KEYS, SIZE),
    **dict.fromkeys(("at", "created_at", "active_until", "opened_at_ms", "closed_at_ms"), TIME),
    **dict.fromkeys(("period_ms", "paused_ms", "uptime_ms"), DURATION),
}
_LABELS = {"period_ms": "period", "paused_ms": "paused", "uptime_ms": "uptime"}


def field(key: str, value: Any) -> str:
    """`value` of `key` as people read it."""
    return FIELDS.get(key, plain)(value)


def column(header: str, key: str) -> Column:
    """A table column showing `key` the way `FIELDS` says."""
    return (header, key, FIELDS.get(key, plain))


def table(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]]) -> str:
    """Aligned columns under a header line; a column of numbers is right-aligned."""
    headers = [header for header, _, _ in columns]
    cells = [[render(row.get(key) if key else row) for _, key, render in columns] for row in rows]
    right = [  # a column of the whole row (key "") is text
        bool(key) and bool(rows) and all(_number(row.get(key)) for row in rows)
        for _, key, _ in columns
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    out = []
    for line in [headers, *cells]:
        padded = (
            text.rjust(width) if r else text.ljust(width)
            for text, width, r in zip(line, widths, right, strict=True)
        )
        out.append("  ".join(padded).rstrip())
    return "\n".join(out)


def _number(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def block(values: Mapping[str, Any], skip: Sequence[str] = (), indent: str = "") -> str:
    """One object as aligned "key: value" lines; a nested object is indented below its key."""
    shown = [(key, item) for key, item in values.items() if key not in skip]
    labels = [_LABELS.get(key, key).replace("_", " ") + ":" for key, _ in shown]
    width = max((len(label) for label in labels), default=0)
    lines = []
    for label, (key, item) in zip(labels, shown, strict=True):
        if isinstance(item, dict) and item:
            lines += [f"{indent}{label}", block(item, indent=indent + "  ")]
        else:
            lines.append(f"{indent}{label:<{width}} {field(key, item)}".rstrip())
    return "\n".join(lines)


# "; " before "key: " (or "key (--flag): ", "config file: ") starts the next problem
_NEXT_PROBLEM = re.compile(r"; (?=[\w.\[\]-]+(?: [\w.]+)?(?: \([^)]*\))?: )")


def problems_of(message: str) -> list[str]:
    """The problems of a config error's message, which joins them with "; " (`Problems`)."""
    return _NEXT_PROBLEM.split(message)


def check_report(source: str, problems: Sequence[str]) -> int:
    """`check-config`'s answer: "FILE: ok" (0), or every problem on its own line (2)."""
    if not problems:
        print(f"{source}: ok")
        return 0
    count = f"{len(problems)} problem" + ("s" if len(problems) > 1 else "")
    print(f"{source}: {count}", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return 2
