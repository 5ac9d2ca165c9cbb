"""Windowing and aggregation of the tagging model (pure functions, no model needed)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from services.model_serving.models.base import top_tags
from services.model_serving.models.windowing import (
    aggregate,
    plan_windows,
    split_windows,
)


def test_short_text_is_one_window() -> None:
    assert plan_windows(0, 254, 32, 16) == [0]
    assert plan_windows(10, 254, 32, 16) == [0]
    assert plan_windows(254, 254, 32, 16) == [0]


def test_windows_cover_the_whole_text_with_overlap() -> None:
    n, window, overlap = 1000, 254, 32
    starts = plan_windows(n, window, overlap, max_windows=100)
    assert starts[0] == 0
    assert starts[-1] == n - window, "the last window ends at the end of the text"
    for a, b in itertools.pairwise(starts):
        assert 0 < b - a <= window - overlap, "consecutive windows overlap by at least `overlap` tokens"
    covered = set()
    for s in starts:
        covered.update(range(s, s + window))
    assert covered == set(range(n))


def test_window_count_is_capped_and_spread_over_the_document() -> None:
    n, window, overlap, cap = 100_000, 254, 32, 16
    uncapped = plan_windows(n, window, overlap, max_windows=10_000)
    assert len(uncapped) > cap
    starts = plan_windows(n, window, overlap, cap)
    assert len(starts) == cap
    assert starts[0] == 0 and starts[-1] == n - window, "first and last part of the document are both read"
    assert set(starts) <= set(uncapped), "capped windows are a subset of the regular grid"
    gaps = np.diff(starts)
    # Evenly spread: every gap is about n / cap, not the first 16 windows in a row.
    assert gaps.min() > (n / cap) * 0.8
    assert gaps.max() < (n / cap) * 1.2


def test_single_window_cap_reads_the_start() -> None:
    assert plan_windows(5000, 254, 32, 1) == [0]


@pytest.mark.parametrize(("window", "overlap", "cap"), [(0, 0, 1), (10, 10, 1), (10, -1, 1), (10, 2, 0)])
def test_invalid_window_settings_are_refused(window: int, overlap: int, cap: int) -> None:
    with pytest.raises(ValueError):
        plan_windows(100, window, overlap, cap)


def test_split_windows_returns_the_tokens() -> None:
    tokens = list(range(600))
    windows = split_windows(tokens, 254, 32, 16)
    assert len(windows) == 3
    assert windows[0] == tokens[:254]
    assert windows[-1] == tokens[-254:]
    assert all(len(w) == 254 for w in windows)


def test_aggregate_is_the_mean_per_document() -> None:
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5], [0.2, 0.8]], dtype=np.float32)
    result = aggregate(probs, owners=[0, 0, 1, 1], n_documents=2)
    np.testing.assert_allclose(result, [[0.5, 0.5], [0.35, 0.65]], rtol=1e-6)
    np.testing.assert_allclose(result.sum(axis=1), 1.0, rtol=1e-6)


def test_aggregate_is_not_dominated_by_one_confident_window() -> None:
    probs = np.array([[0.99, 0.01], [0.2, 0.8], [0.2, 0.8], [0.2, 0.8]])
    result = aggregate(probs, owners=[0, 0, 0, 0], n_documents=1)
    assert result[0].argmax() == 1


def test_aggregate_refuses_documents_without_windows() -> None:
    with pytest.raises(ValueError):
        aggregate(np.ones((1, 2)) / 2, owners=[1], n_documents=2)
    with pytest.raises(ValueError):
        aggregate(np.ones((2, 2)) / 2, owners=[0], n_documents=1)


def test_top_tags_drops_weak_tags_but_keeps_the_best() -> None:
    labels = ["a", "b", "c", "d"]
    probs = np.array([0.02, 0.03, 0.01, 0.04])
    assert top_tags(probs, labels, top_k=3, min_score=0.05) == [("d", pytest.approx(0.04))]
    probs = np.array([0.1, 0.6, 0.26, 0.04])
    assert [t for t, _ in top_tags(probs, labels, top_k=3, min_score=0.05)] == ["b", "c", "a"]
    assert [t for t, _ in top_tags(probs, labels, top_k=2, min_score=0.0)] == ["b", "c"]
