"""What the console's pages show, worked out from the service's answers: no I/O here.

Invariants:
- Sizes, coins and times are rendered from integers with integer arithmetic
  (no float touches bytes or millicoins); times are UTC, and say so.
- A month is [first day 00:00 UTC, first day of the next month 00:00 UTC).
- Text cells of a CSV export that a spreadsheet would run as a formula
  (starting with = + - @ or a tab) are prefixed with an apostrophe.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass

from quota.billing.repo.console import DAY_MS, DayUsage, KindTotal
from quota.contract import wire
from quota.core.money import format_coin
from quota.webpages import size, when

__all__ = ["size", "when"]  # the shared filters, used here and by the templates

USAGE_DAYS = 30
_MONTH = re.compile(r"([0-9]{4})-([0-9]{2})", re.ASCII)


def coin(millicoins: int) -> str:
    return format_coin(millicoins)


def signed_coin(millicoins: int) -> str:
    return ("+" if millicoins > 0 else "") + format_coin(millicoins)


def day_label(day: int) -> str:
    return dt.datetime.fromtimestamp(day * DAY_MS // 1000, dt.UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True, slots=True, kw_only=True)
class Month:
    year: int
    month: int

    @property
    def label(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def start_ms(self) -> int:
        return int(dt.datetime(self.year, self.month, 1, tzinfo=dt.UTC).timestamp()) * 1000

    @property
    def end_ms(self) -> int:
        return self.next().start_ms

    def next(self) -> Month:
        return Month(year=self.year + self.month // 12, month=self.month % 12 + 1)

    def previous(self) -> Month:
        if self.month == 1:
            return Month(year=self.year - 1, month=12)
        return Month(year=self.year, month=self.month - 1)


def month_of(ms: int) -> Month:
    moment = dt.datetime.fromtimestamp(ms // 1000, dt.UTC)
    return Month(year=moment.year, month=moment.month)


def parse_month(text: str) -> Month | None:
    """ "2026-12" as a month; None when it is not one (years 1970..9998)."""
    match = _MONTH.fullmatch(text)
    if match is None:
        return None
    year, month = int(match.group(1)), int(match.group(2))
    return Month(year=year, month=month) if 1970 <= year <= 9998 and 1 <= month <= 12 else None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentView:
    """One agent's row on the overview page."""

    agent: wire.Agent
    plan_traffic: int  # bytes the plan includes a period (0 for none)
    bucket_used: int
    paying: bool  # a client agent pays; a support agent pays nothing


def agent_view(agent: wire.Agent, catalogue: wire.Catalogue) -> AgentView:
    plans = {p.name: p for p in catalogue.plans}
    plan = plans.get(agent.plan or "")
    included = plan.traffic if plan is not None else 0
    return AgentView(
        agent=agent,
        plan_traffic=included,
        bucket_used=max(0, included - agent.bucket_bytes),
        paying=agent.role != "support",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Balance:
    balance: int
    monthly_total: int  # millicoins a month the active plans cost

    @property
    def low(self) -> bool:
        """Below twice the monthly total: the threshold of the low-balance notice."""
        return self.monthly_total > 0 and self.balance < 2 * self.monthly_total


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageTable:
    days: list[int]  # days since the epoch, oldest first, USAGE_DAYS of them
    agents: list[str]  # agent ids with usage in the window, in first-seen order
    cells: dict[tuple[int, str], int]  # (day, agent id) -> bytes

    def day_total(self, day: int) -> int:
        return sum(self.cells.get((day, a), 0) for a in self.agents)

    def agent_total(self, agent_id: str) -> int:
        return sum(self.cells.get((d, agent_id), 0) for d in self.days)


def usage_table(rows: Iterable[DayUsage], today: int, days: int = USAGE_DAYS) -> UsageTable:
    window = list(range(today - days + 1, today + 1))
    cells: dict[tuple[int, str], int] = {}
    agents: list[str] = []
    for row in rows:
        if window[0] <= row.day <= today:
            cells[(row.day, row.agent_id)] = cells.get((row.day, row.agent_id), 0) + row.bytes
            if row.agent_id not in agents:
                agents.append(row.agent_id)
    return UsageTable(days=window, agents=agents, cells=cells)


@dataclass(frozen=True, slots=True, kw_only=True)
class Statement:
    account: wire.Account
    month: Month
    opening: int
    closing: int
    kinds: list[KindTotal]
    usage: UsageTable

    @property
    def credits(self) -> int:
        return sum(k.amount for k in self.kinds if k.amount > 0)

    @property
    def debits(self) -> int:
        return sum(k.amount for k in self.kinds if k.amount < 0)


_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: str) -> str:
    """A text cell a spreadsheet shows as text, never runs as a formula."""
    return "'" + value if value.startswith(_FORMULA) else value


CSV_HEADER = (
    "id",
    "time_utc",
    "kind",
    "agent_id",
    "agent",
    "amount",
    "balance_after",
    "traffic_bytes",
    "used_bytes",
    "reason",
)


def csv_row(entry: wire.LedgerEntry, names: dict[str, str]) -> list[str]:
    agent = names.get(entry.agent_id or "", "")
    return [
        str(entry.id),
        when(entry.at).removesuffix(" UTC"),
        str(entry.kind),
        entry.agent_id or "",
        csv_text(agent),
        format_coin(entry.amount),
        format_coin(entry.balance_after),
        str(entry.traffic_bytes),
        str(entry.used_bytes),
        csv_text(entry.reason),
    ]
