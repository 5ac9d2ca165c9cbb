"""DynamicBatcher: same numbers as the unbatched path, order, batch limits, overload and deadlines.

A tiny random-weight BERT (64-token windows) is the model; `GatedModel` holds its forward
passes at a gate so queue states can be set up without timing assumptions.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.model_serving.batcher import (
    BatcherClosed,
    BatcherConfig,
    DeadlineExceeded,
    DynamicBatcher,
    Overloaded,
)
from services.model_serving.models.base import InferenceOptions, probabilities
from services.model_serving.models.bert import BertWindowModel
from services.model_serving.models.loader import load_model
from tests.model_artifacts import make_tiny_bert

SHORT = ["코스피 급락", "손흥민 골", "국회 본회의 추경 처리", "새 스마트폰 출시", "날씨"]
LONG = [
    "정부는 내년도 예산안을 국회에 제출했다. " * 12,
    "토트넘이 역전승을 거두며 리그 선두를 지켰다. 손흥민은 시즌 10호 골을 기록했다. " * 9,
    "환율이 1,400원을 돌파하며 외국인 매도세가 이어졌다. " * 20,
]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> BertWindowModel:
    directory = make_tiny_bert(tmp_path_factory.mktemp("tiny") / "tiny", seed=3)
    loaded = load_model(directory, InferenceOptions(max_windows=4))
    assert isinstance(loaded, BertWindowModel)
    return loaded


class GatedModel:
    """The model with a gate in front of `forward`, recording every batch it is given."""

    def __init__(self, model: BertWindowModel) -> None:
        self._model = model
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[list[list[int]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def forward(self, windows: Sequence[Sequence[int]]) -> np.ndarray:
        self.batches.append([list(w) for w in windows])
        self.entered.set()
        assert self.gate.wait(timeout=30), "test gate never opened"
        return self._model.forward(windows)


@pytest.fixture()
def gated(model: BertWindowModel) -> Iterator[GatedModel]:
    g = GatedModel(model)
    yield g
    g.gate.set()


async def _wait_until_running(gated: GatedModel) -> None:
    assert await asyncio.to_thread(gated.entered.wait, 30)


def _batcher(model: Any, **config: Any) -> DynamicBatcher:
    return DynamicBatcher(model, BatcherConfig(**config))


def _close(batcher: DynamicBatcher) -> None:
    if isinstance(batcher.model, GatedModel):
        batcher.model.gate.set()   # a failed test must not leave a forward pass waiting
    batcher.close()


async def test_batched_results_equal_the_unbatched_path_in_request_order(model: BertWindowModel) -> None:
    requests = [[SHORT[i % 5], LONG[i % 3]] if i % 3 == 0 else [LONG[i % 3]] if i % 3 == 1 else SHORT[: 1 + i % 5]
                for i in range(15)]
    assert any(len(p.windows) > 1 for p in model.prepare(LONG)), "some texts must have several windows"
    expected = [probabilities(model, texts) for texts in requests]
    distinct = np.concatenate(expected)
    assert len({tuple(np.round(row, 4)) for row in distinct}) > 5, "texts must score differently to catch mix-ups"
    batcher = _batcher(model, batch_max_windows=4, inference_threads=2, max_delay_s=0.002)
    try:
        results = await asyncio.gather(*(batcher.submit(model.prepare(texts)) for texts in requests))
    finally:
        _close(batcher)
    for got, want in zip(results, expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5)


async def test_batches_never_exceed_the_maximum_and_group_similar_lengths(gated: GatedModel) -> None:
    batcher = _batcher(gated, batch_max_windows=3, inference_threads=1, max_queue_windows=1000)
    try:
        first = asyncio.create_task(batcher.submit(gated.prepare(["첫 요청"])))
        await _wait_until_running(gated)
        texts = SHORT * 3 + LONG
        pending = [asyncio.create_task(batcher.submit(gated.prepare([t]))) for t in texts]
        await asyncio.sleep(0)
        gated.gate.set()
        await asyncio.gather(first, *pending)
    finally:
        _close(batcher)
    assert sum(len(b) for b in gated.batches) == 1 + sum(len(p.windows) for p in gated.prepare(texts))
    assert max(len(b) for b in gated.batches) == 3
    for batch in gated.batches:
        lengths = [len(w) for w in batch]
        assert max(lengths) - min(lengths) <= 16, f"a short window was padded to a long one: {lengths}"


async def test_full_queue_refuses_at_once_with_retry_after(gated: GatedModel) -> None:
    batcher = _batcher(gated, batch_max_windows=2, inference_threads=1, max_queue_windows=4)
    try:
        running = asyncio.create_task(batcher.submit(gated.prepare([SHORT[0]])))
        await _wait_until_running(gated)
        queued = [asyncio.create_task(batcher.submit(gated.prepare([t]))) for t in SHORT[1:5]]
        await asyncio.sleep(0.01)
        assert batcher.queued_windows == 4
        with pytest.raises(Overloaded) as info:
            await batcher.submit(gated.prepare(["하나 더"]))
        assert info.value.retry_after > 0
        gated.gate.set()
        results = await asyncio.gather(running, *queued)
        assert all(r.shape == (1, 3) for r in results)
        await batcher.submit(gated.prepare(["이제는 된다"]))   # the queue has room again
    finally:
        _close(batcher)


async def test_a_request_larger_than_the_queue_runs_when_the_queue_is_empty(model: BertWindowModel) -> None:
    batcher = _batcher(model, batch_max_windows=2, max_queue_windows=2)
    try:
        prepared = model.prepare(LONG)
        assert sum(len(p.windows) for p in prepared) > 2
        np.testing.assert_allclose(await batcher.submit(prepared), probabilities(model, LONG), atol=1e-5)
    finally:
        _close(batcher)


async def test_expired_request_is_dropped_before_its_windows_run(gated: GatedModel) -> None:
    batcher = _batcher(gated, batch_max_windows=8, inference_threads=1)
    try:
        running = asyncio.create_task(batcher.submit(gated.prepare([SHORT[0]])))
        await _wait_until_running(gated)
        doomed = gated.prepare([LONG[0]])
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(doomed, deadline=time.monotonic() + 0.05)
        assert batcher.queued_windows == 0, "the expired request's windows left the queue"
        later = asyncio.create_task(batcher.submit(gated.prepare([SHORT[1]])))
        gated.gate.set()
        await asyncio.gather(running, later)
    finally:
        _close(batcher)
    ran = [w for batch in gated.batches for w in batch]
    assert not any(w in ran for w in doomed[0].windows), "no compute was spent on the expired request"


async def test_deadline_already_passed_is_refused(model: BertWindowModel) -> None:
    batcher = _batcher(model)
    try:
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(model.prepare(["늦었다"]), deadline=time.monotonic() - 1)
    finally:
        _close(batcher)


async def test_abandoned_request_frees_the_queue(gated: GatedModel) -> None:
    batcher = _batcher(gated, inference_threads=1)
    try:
        running = asyncio.create_task(batcher.submit(gated.prepare([SHORT[0]])))
        await _wait_until_running(gated)
        abandoned = asyncio.create_task(batcher.submit(gated.prepare(LONG)))
        await asyncio.sleep(0.01)
        assert batcher.queued_windows > 0
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        assert batcher.queued_windows == 0
        gated.gate.set()
        await running
    finally:
        _close(batcher)
    assert len(gated.batches) == 1


async def test_close_fails_what_is_queued(gated: GatedModel) -> None:
    batcher = _batcher(gated, inference_threads=1)
    running = asyncio.create_task(batcher.submit(gated.prepare([SHORT[0]])))
    await _wait_until_running(gated)
    queued = asyncio.create_task(batcher.submit(gated.prepare([SHORT[1]])))
    await asyncio.sleep(0.01)
    closing = asyncio.create_task(asyncio.to_thread(batcher.close))
    while not batcher._closing:
        await asyncio.sleep(0.001)
    gated.gate.set()   # only now: the queued window must not start before close() took the queue
    await closing
    await running   # the forward pass that was running completes
    with pytest.raises(BatcherClosed):
        await queued
    with pytest.raises(BatcherClosed):
        await batcher.submit(gated.prepare([SHORT[2]]))


def test_windows_per_text_are_capped_and_sized(tmp_path: Path) -> None:
    directory = make_tiny_bert(tmp_path / "tiny")
    text = "정부는 내년도 예산안을 국회에 제출했다. " * 200
    capped = load_model(directory, InferenceOptions(max_windows=3, quantize=False))
    [prepared] = capped.prepare([text])
    assert len(prepared.windows) == 3 and all(len(w) == 64 for w in prepared.windows)
    assert prepared.n_tokens > 3 * 64
    narrow = load_model(directory, InferenceOptions(max_windows=1000, window_tokens=40, overlap=8))
    [prepared] = narrow.prepare([text])
    assert all(len(w) <= 40 for w in prepared.windows)
    assert len(prepared.windows) == -(-(prepared.n_tokens - 38) // 30) + 1, "the whole text is covered"
