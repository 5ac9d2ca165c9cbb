"""Shadow mode's parts that need no server: the comparison of two answers, the per-label report,
and the bounded queue that drops (and counts) instead of making an answer wait."""
from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from services.model_serving.resolved import ResolvedModel
from services.model_serving.shadow import (
    Comparison,
    ShadowQueue,
    ShadowResult,
    ShadowSample,
    compare,
    per_label,
)

LABELS = ["경제", "정치", "사회"]
CANDIDATE = ResolvedModel("m", "2", Path("/nonexistent"), "0" * 64)


def _sample(tenant: str | None = "t1", text: str = "금리 동결") -> ShadowSample:
    return ShadowSample(tenant, "1", CANDIDATE, text, [("경제", 0.8), ("정치", 0.1)])


def test_top_labels_are_compared() -> None:
    agree = compare([("경제", 0.8), ("정치", 0.1)], np.array([0.7, 0.2, 0.1]), LABELS)
    assert agree == Comparison("경제", "경제", True)
    assert compare([("경제", 0.5)], np.array([0.2, 0.1, 0.7]), LABELS) == Comparison("경제", "사회", False)
    with pytest.raises(ValueError):
        compare([], np.array([1.0, 0, 0]), LABELS)


def test_per_label_counts_agreement_and_disagreement_from_both_sides() -> None:
    report = per_label([("경제", "경제", 6), ("경제", "정치", 2), ("정치", "정치", 1), ("사회", "경제", 1)])
    assert report == {
        "경제": {"production": 8, "candidate": 7, "agree": 6, "disagree": 2, "agreement": 0.75},
        "사회": {"production": 1, "candidate": 0, "agree": 0, "disagree": 1, "agreement": 0.0},
        "정치": {"production": 1, "candidate": 3, "agree": 1, "disagree": 0, "agreement": 1.0},
    }
    assert per_label([]) == {}


def test_a_full_queue_drops_and_counts_at_once_while_the_thread_is_busy() -> None:
    """The scorer is held on an event: offering never waits for it; what does not fit is dropped."""
    release, busy = threading.Event(), threading.Event()
    scored: list[ShadowSample] = []

    def score(sample: ShadowSample) -> ShadowResult:
        busy.set()
        release.wait(10)
        scored.append(sample)
        return ShadowResult(datetime.now(UTC), sample, Comparison("경제", "경제", True), 1.0)

    shadow = ShadowQueue(2, score, nice=0)
    shadow.start()
    try:
        assert shadow.offer(_sample("t1", "첫 문장"))
        assert busy.wait(10)   # the thread holds the first sample; two more fit in the queue
        accepted = [shadow.offer(_sample("t1" if i % 2 else "t2", f"문장 {i}")) for i in range(10)]
        assert accepted == [True, True] + [False] * 8
        assert shadow.take_drops() == {("t2", "m", "1", "2"): 4, ("t1", "m", "1", "2"): 4}
        assert shadow.take_drops() == {}
        release.set()
        for _ in range(1000):
            if len(shadow.results) == 3:
                break
            threading.Event().wait(0.01)
    finally:
        release.set()
        shadow.stop()
    assert [s.text for s in scored] == ["첫 문장", "문장 0", "문장 1"]
    assert [r.sample.text for r in shadow.results] == ["첫 문장", "문장 0", "문장 1"]


def test_a_failing_scorer_does_not_stop_the_thread() -> None:
    done = threading.Event()
    calls: list[str] = []

    def score(sample: ShadowSample) -> ShadowResult | None:
        calls.append(sample.text)
        if sample.text == "boom":
            raise RuntimeError("candidate broke")
        done.set()
        return None

    shadow = ShadowQueue(4, score, nice=0)
    shadow.start()
    try:
        shadow.offer(_sample(text="boom"))
        shadow.offer(_sample(text="fine"))
        assert done.wait(10)
    finally:
        shadow.stop()
    assert calls == ["boom", "fine"] and not shadow.results


def test_only_production_answers_of_a_model_with_shadow_on_and_another_candidate_are_offered() -> None:
    from services.model_serving.models.base import InferenceOptions
    from services.model_serving.shadow import ShadowMode, ShadowSettings, ShadowState

    production = ResolvedModel("m", "1", Path("/nonexistent"), "1" * 64)
    mode = ShadowMode(None, lambda name, alias: None, InferenceOptions(),  # type: ignore[arg-type]
                      ShadowSettings(shadow_share=1.0, shadow_queue=100))
    texts = [f"문장 {i}" for i in range(20)]
    tags = [[("경제", 0.9)] for _ in texts]

    mode.offer(production, texts, tags, "t1")   # no setting for the model: nothing
    assert mode.queue.depth == 0
    mode.states = {"m": ShadowState(False, None, CANDIDATE)}
    mode.offer(production, texts, tags, "t1")   # switched off
    assert mode.queue.depth == 0
    mode.states = {"m": ShadowState(True, None, ResolvedModel("m", "1", Path("/x"), "1" * 64))}
    mode.offer(production, texts, tags, "t1")   # the candidate is the version answering
    assert mode.queue.depth == 0
    mode.states = {"m": ShadowState(True, None, CANDIDATE)}
    mode.offer(production, texts, tags, "t1")   # share 1.0: every text
    assert mode.queue.depth == 20
    mode.states = {"m": ShadowState(True, 0.25, CANDIDATE)}
    mode.queue = ShadowQueue(10_000, lambda s: None)
    mode.offer(production, texts * 100, tags * 100, "t1")   # a model's own share: about a quarter
    assert 350 < mode.queue.depth < 650
