"""A bar chart of daily counts as SVG geometry, drawn by the template on the server.

No chart library and no script: the page gets finished `<rect>`s and labels (styled by classes
from app.css, so the CSP's style-src 'self' holds), and the same numbers as a table for screen
readers and for reading exact values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date

WIDTH, HEIGHT = 760, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 16, 32


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    day: str
    label: str      # "11/30 · 120회", the bar's <title>
    calls: int


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True)
class XLabel:
    x: float
    label: str


@dataclass
class BarChart:
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right_edge: int = WIDTH - RIGHT
    baseline: float = HEIGHT - BOTTOM
    bars: list[Bar] = field(default_factory=list)
    ticks: list[Tick] = field(default_factory=list)
    x_labels: list[XLabel] = field(default_factory=list)
    limit_y: float | None = None   # the daily quota's line, when it fits the scale
    peak: int = 0
    total: int = 0


def nice_ceiling(value: int) -> int:
    """The top of a four-tick axis over `value`: 4 × a step of 1, 2, 2.5 or 5 × 10^k (whole numbers)."""
    need = max(value, 1) / 4
    power = 10 ** math.floor(math.log10(need)) if need >= 1 else 1
    for step in (1, 2, 2.5, 5, 10):
        tick = step * power
        if tick >= need and tick == int(tick):
            return int(tick) * 4
    return 40 * power


def daily_bars(days: list[dict[str, object]], daily_limit: int | None = None) -> BarChart:
    """The chart of `days` ([{day: "YYYY-MM-DD", calls: n}], oldest first). The quota line is drawn
    when it is at most twice the busiest day (else it would flatten every bar to nothing)."""
    chart = BarChart()
    counts = [max(0, int(str(d.get("calls", 0)))) for d in days]
    chart.peak, chart.total = max(counts, default=0), sum(counts)
    show_limit = bool(daily_limit) and daily_limit is not None and daily_limit <= 2 * max(chart.peak, 1)
    top = nice_ceiling(max(chart.peak, daily_limit if show_limit and daily_limit else 0))
    plot_h = chart.baseline - TOP
    plot_w = chart.right_edge - LEFT
    slot = plot_w / max(len(days), 1)
    gap = min(4.0, slot * 0.25)
    for i, (d, calls) in enumerate(zip(days, counts, strict=True)):
        h = plot_h * calls / top
        day = date.fromisoformat(str(d["day"]))
        short = f"{day.month}/{day.day}"
        chart.bars.append(Bar(x=round(LEFT + i * slot + gap / 2, 1), y=round(chart.baseline - h, 1),
                              width=round(slot - gap, 1), height=round(h, 1), day=str(d["day"]),
                              label=f"{short} · {calls:,}회", calls=calls))
        if i % 5 == (len(days) - 1) % 5:   # every fifth day, ending on today
            chart.x_labels.append(XLabel(x=round(LEFT + i * slot + slot / 2, 1), label=short))
    for k in range(5):
        value = top * k // 4
        chart.ticks.append(Tick(y=round(chart.baseline - plot_h * k / 4, 1), label=f"{value:,}"))
    if show_limit and daily_limit:
        chart.limit_y = round(chart.baseline - plot_h * daily_limit / top, 1)
    return chart
