"""Summaries and the printed table of the model-serving benchmark (kept apart so they can be unit-tested)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100, linear interpolation); NaN for no values."""
    if not values:
        return float("nan")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    return float(np.percentile(np.asarray(values, dtype=float), q))


@dataclass(frozen=True)
class Summary:
    """One measured phase: latencies in milliseconds, throughput in texts per second."""

    n: int
    errors: int
    seconds: float
    p50_ms: float
    p95_ms: float
    mean_ms: float
    texts_per_s: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def summarize(latencies_ms: Sequence[float], errors: int, seconds: float, texts_per_call: int = 1) -> Summary:
    """Successful calls' latencies, failed calls and wall time of a phase -> Summary."""
    n = len(latencies_ms)
    return Summary(
        n=n, errors=errors, seconds=seconds,
        p50_ms=percentile(latencies_ms, 50), p95_ms=percentile(latencies_ms, 95),
        mean_ms=float(np.mean(latencies_ms)) if n else float("nan"),
        texts_per_s=n * texts_per_call / seconds if seconds > 0 else float("nan"),
    )


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when either is missing or the denominator is zero."""
    if denominator == 0 or np.isnan(numerator) or np.isnan(denominator):
        return float("nan")
    return numerator / denominator


@dataclass(frozen=True)
class Check:
    """A target: `value` compared with `limit` by `op` ('>=', '<=' or '<'); NaN never passes."""

    name: str
    value: float
    op: str
    limit: float

    @property
    def passed(self) -> bool:
        if np.isnan(self.value):
            return False
        if self.op == ">=":
            return self.value >= self.limit
        if self.op == "<=":
            return self.value <= self.limit
        if self.op == "<":
            return self.value < self.limit
        raise ValueError(f"unknown comparison {self.op!r}")

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "value": self.value, "op": self.op, "limit": self.limit, "passed": self.passed}


def fmt(value: float, digits: int = 1) -> str:
    """A number for the table; '-' for missing."""
    return "-" if value is None or np.isnan(value) else f"{value:.{digits}f}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def format_checks(checks: Sequence[Check]) -> str:
    """One line per target: name, value, limit and PASS/FAIL."""
    rows = [[c.name, fmt(c.value, 2), f"{c.op} {fmt(c.limit, 2)}", "PASS" if c.passed else "FAIL"] for c in checks]
    return format_table(["target", "measured", "required", "result"], rows)
