"""The benchmark's summary and table helpers (the benchmark itself is not a test)."""
from __future__ import annotations

import math

import pytest

from tests.bench.stats import (
    Check,
    format_checks,
    format_table,
    percentile,
    ratio,
    summarize,
)


def test_percentile_interpolates_linearly() -> None:
    values = [40.0, 10.0, 30.0, 20.0]
    assert percentile(values, 50) == pytest.approx(25.0)
    assert percentile(values, 0) == 10.0
    assert percentile(values, 100) == 40.0
    assert percentile(values, 95) == pytest.approx(38.5)


def test_percentile_of_nothing_is_nan_and_out_of_range_is_refused() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize_counts_texts_per_second_from_successes_only() -> None:
    summary = summarize([10.0, 20.0, 30.0], errors=2, seconds=0.5)
    assert summary.n == 3 and summary.errors == 2
    assert summary.p50_ms == pytest.approx(20.0) and summary.mean_ms == pytest.approx(20.0)
    assert summary.texts_per_s == pytest.approx(6.0)
    assert summarize([5.0], errors=0, seconds=1.0, texts_per_call=32).texts_per_s == pytest.approx(32.0)


def test_summarize_without_successes_has_no_latency() -> None:
    summary = summarize([], errors=4, seconds=1.0)
    assert math.isnan(summary.p50_ms) and math.isnan(summary.p95_ms) and summary.texts_per_s == 0.0


def test_ratio_is_nan_when_a_side_is_missing() -> None:
    assert ratio(30.0, 10.0) == pytest.approx(3.0)
    assert math.isnan(ratio(1.0, 0.0))
    assert math.isnan(ratio(float("nan"), 1.0))


@pytest.mark.parametrize(("value", "op", "limit", "passed"), [
    (3.0, ">=", 3.0, True), (2.9, ">=", 3.0, False),
    (1.2, "<=", 1.2, True), (1.21, "<=", 1.2, False),
    (499.9, "<", 500.0, True), (500.0, "<", 500.0, False),
    (float("nan"), ">=", 0.0, False),
])
def test_check_compares_and_nan_never_passes(value: float, op: str, limit: float, passed: bool) -> None:
    assert Check("x", value, op, limit).passed is passed


def test_check_refuses_an_unknown_comparison() -> None:
    with pytest.raises(ValueError):
        _ = Check("x", 1.0, "==", 1.0).passed


def test_table_aligns_columns() -> None:
    text = format_table(["target", "p50 ms"], [["grpc", "6.1"], ["naive FastAPI", "12.5"]])
    lines = text.splitlines()
    assert lines[0] == "target         p50 ms"
    assert lines[1] == "-------------  ------"
    assert lines[2] == "grpc              6.1"
    assert lines[3] == "naive FastAPI    12.5"


def test_checks_table_says_pass_and_fail() -> None:
    text = format_checks([Check("throughput / naive", 3.4, ">=", 3.0), Check("doc p95 ms", float("nan"), "<", 500.0)])
    assert "3.40" in text and ">= 3.00" in text and "PASS" in text
    last = text.splitlines()[-1]
    assert last.startswith("doc p95 ms") and " - " in last and last.endswith("FAIL")
