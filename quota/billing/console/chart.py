"""A small server-side SVG bar chart: geometry only, drawn by the `usage.html` template.

Invariants:
- Integer arithmetic in SVG user units: a bar's height is its bytes scaled to
  the tallest day, rounded down, so stacked parts never exceed their column.
- One colour per agent, from a fixed palette that stays readable on white
  (cycled beyond its length); the legend lists the same colours.
- No script and no style attribute: the page's Content-Security-Policy stays strict.
"""

from __future__ import annotations

from dataclasses import dataclass

from quota.billing.console.views import UsageTable, day_label, size

WIDTH, HEIGHT = 900, 260
LEFT, BOTTOM, TOP = 70, 30, 10
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


@dataclass(frozen=True, slots=True, kw_only=True)
class Bar:
    x: int
    y: int
    width: int
    height: int
    colour: str
    title: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick:
    y: int
    label: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Label:
    x: int
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Chart:
    width: int
    height: int
    left: int
    base: int  # the y of the x axis
    bars: list[Bar]
    ticks: list[Tick]
    labels: list[Label]  # day labels under some columns
    legend: list[tuple[str, str]]  # (colour, agent name)


def _colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def usage_chart(table: UsageTable, names: dict[str, str]) -> Chart:
    """Stacked bars of bytes per day, one colour per agent, with a y axis in bytes."""
    plot = HEIGHT - BOTTOM - TOP
    base = HEIGHT - BOTTOM
    column = (WIDTH - LEFT) // max(1, len(table.days))
    tallest = max((table.day_total(d) for d in table.days), default=0)
    bars: list[Bar] = []
    for i, day in enumerate(table.days):
        y = base
        for a, agent_id in enumerate(table.agents):
            used = table.cells.get((day, agent_id), 0)
            height = used * plot // tallest if tallest else 0
            if height <= 0:
                continue
            y -= height
            name = names.get(agent_id, agent_id)
            bars.append(
                Bar(
                    x=LEFT + i * column + 1,
                    y=y,
                    width=max(1, column - 2),
                    height=height,
                    colour=_colour(a),
                    title=f"{name}, {day_label(day)}: {size(used)}",
                )
            )
    ticks = [Tick(y=base - plot * q // 4, label=size(tallest * q // 4)) for q in range(5)]
    labels = [
        Label(x=LEFT + i * column + column // 2, text=day_label(d)[5:])
        for i, d in enumerate(table.days)
        if i % 5 == 0 or i == len(table.days) - 1
    ]
    legend = [
        (_colour(a), names.get(agent_id, agent_id)) for a, agent_id in enumerate(table.agents)
    ]
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        base=base,
        bars=bars,
        ticks=ticks if tallest else [Tick(y=base, label="0 B")],
        labels=labels,
        legend=legend,
    )
