"""Dynamic batching of model windows from concurrent requests (as Triton's dynamic batcher).

A request is a list of prepared texts; its windows join one FIFO queue shared by all
requests to the same model. Inference threads take windows from that queue and run them
through `WindowModel.forward` together:

- A batch is started when `batch_max_windows` windows wait, or when the oldest has waited
  `max_delay_s` (0, the default, means "at once": under load windows pile up while a forward
  pass runs, so batches grow by themselves without adding latency to a lone request).
- Length bucketing: the oldest queued window anchors the batch; the other windows are
  picked from the head of the queue by closeness of length, and only while the batch's
  longest window is at most `max(bucket_slack_tokens, 25 %)` longer than its shortest, so
  a headline is never padded to a 256-token window (those wait for the next batch).
- When several inference threads are idle, the queued windows are shared between them,
  so one long document's windows run on all cores at once.
- The queue is bounded: a request whose windows would push it beyond `max_queue_windows`
  fails at once with `Overloaded` (carrying a retry-after estimate from the measured rate).
- Deadlines: a request whose deadline has passed is dropped before any more of its windows
  run and fails with `DeadlineExceeded`; the caller is answered at its deadline even while
  its windows still wait.
- Each text's outputs are assembled in window order and reduced by `WindowModel.finish`;
  a text's result does not depend on which batch its windows ran in (padding is masked).

Thread configuration. `torch.set_num_threads` is process-wide; the default is one torch
thread (`DOCTAG_TORCH_THREADS=1`) and one inference thread per core (`DOCTAG_INFERENCE_THREADS`):
batching already fills a core (a headline window costs about 1.5x less per window in batches
of 16-64 than alone), one torch thread per inference thread avoids OpenMP fork/join on every
small matrix, and a long document still uses every core because idle threads share its
windows. `make bench-model` measures the result (README, "The tagging model").

Batch invariance. fp32 padding-masked batching (torch or ONNX Runtime) gives a text the same
scores in any batch to about 1e-6, so serving equals `doctag model eval`. Dynamic int8
quantisation (`DOCTAG_QUANTIZE`, off by default) is faster but quantises activations with
one scale per tensor, so a window's scores then depend on the other windows of its batch.
"""
from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .metrics import (
    DEADLINE_EXCEEDED,
    FORWARD_LATENCY,
    INFERENCE_BATCH_PADDING,
    INFERENCE_BATCH_WINDOWS,
    OVERLOADED,
    QUEUE_DEPTH,
    QUEUE_WAIT,
)
from .models.base import PreparedText, WindowModel

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue is full; try again after `retry_after` seconds."""

    def __init__(self, retry_after: float, message: str = "model-serving is overloaded") -> None:
        super().__init__(f"{message}; retry after {retry_after:.2f} s")
        self.retry_after = retry_after


class DeadlineExceeded(Exception):
    """The request's deadline passed before its windows could run."""


class BatcherClosed(Exception):
    """The batcher was closed (the model is being unloaded)."""


@dataclass(frozen=True)
class BatcherConfig:
    batch_max_windows: int = 16        # windows per forward pass at most
    max_delay_s: float = 0.0           # how long the oldest window may wait for a fuller batch
    max_queue_windows: int = 512       # queued (not yet running) windows at most
    inference_threads: int = 1         # threads running forward passes
    torch_threads: int = 1             # torch intra-op threads of each of them
    bucket_slack_tokens: int = 16      # length difference always allowed inside one batch
    bucket_ratio: float = 1.25         # longest / shortest window of a batch at most (beyond the slack)
    scan_windows: int = 256            # how far into the queue a batch looks for windows of similar length


@dataclass(eq=False)
class _Request:
    prepared: list[PreparedText]
    windows: list[Sequence[int]]
    deadline: float | None
    future: asyncio.Future[np.ndarray]
    loop: asyncio.AbstractEventLoop
    enqueued: float
    queued: int = 0                  # windows still in the queue
    remaining: int = 0               # windows not computed yet
    dead: bool = False               # failed, cancelled or answered: skip its windows
    released: bool = False           # counted out of `_active`
    outputs: np.ndarray | None = None


@dataclass(eq=False)
class _Entry:
    request: _Request
    index: int
    length: int = field(init=False)

    def __post_init__(self) -> None:
        self.length = len(self.request.windows[self.index])


class DynamicBatcher:
    """Batches the windows of concurrent requests to one model. Create it on the event loop."""

    def __init__(self, model: WindowModel, config: BatcherConfig | None = None, *, label: str | None = None) -> None:
        self.model = model
        self.config = config or BatcherConfig()
        if self.config.batch_max_windows < 1 or self.config.inference_threads < 1:
            raise ValueError("batch_max_windows and inference_threads must be at least 1")
        self.label = label or f"{model.name}:{model.version}"
        self._queue: deque[_Entry] = deque()
        self._queued = 0                     # windows in the queue of live requests
        self._active = 0                     # requests submitted and not answered
        self._idle = 0                       # inference threads waiting for work
        self._closing = False
        self._cond = threading.Condition()
        self._seconds_per_window = 0.01      # moving average of forward time per window and thread
        self._gauge = QUEUE_DEPTH.labels(self.label)
        self._gauge.set(0)
        # Process-wide in torch (not per thread): every inference thread runs with this many.
        torch.set_num_threads(self.config.torch_threads)
        self._threads = [threading.Thread(target=self._work, name=f"inference-{i}", daemon=True)
                         for i in range(self.config.inference_threads)]
        for thread in self._threads:
            thread.start()

    # -- caller side (event loop) ------------------------------------------------------------
    @property
    def queued_windows(self) -> int:
        return self._queued

    @property
    def active_requests(self) -> int:
        return self._active

    def retry_after(self) -> float:
        """Seconds until the queue has drained, as estimated from recent forward passes."""
        estimate = self._queued * self._seconds_per_window / self.config.inference_threads
        return min(60.0, max(0.1, estimate))

    async def submit(self, prepared: Sequence[PreparedText], deadline: float | None = None) -> np.ndarray:
        """(len(prepared), n_labels) probabilities, in the order of `prepared`.

        `deadline` is a `time.monotonic()` instant. Raises Overloaded, DeadlineExceeded or BatcherClosed.
        """
        if not prepared:
            return np.zeros((0, len(self.model.labels)))
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            DEADLINE_EXCEEDED.inc()
            raise DeadlineExceeded("the deadline passed before the request was queued")
        windows: list[Sequence[int]] = [w for p in prepared for w in p.windows]
        if any(len(p.windows) == 0 for p in prepared):
            raise ValueError("every prepared text needs at least one window")
        request = _Request(list(prepared), windows, deadline, loop.create_future(), loop, now,
                           queued=len(windows), remaining=len(windows))
        with self._cond:
            if self._closing:
                raise BatcherClosed("the model is being unloaded")
            # An empty queue takes any request, so one huge request cannot be refused forever.
            if self._queued and self._queued + len(windows) > self.config.max_queue_windows:
                OVERLOADED.inc()
                raise Overloaded(self.retry_after())
            self._queue.extend(_Entry(request, i) for i in range(len(windows)))
            self._queued += len(windows)
            self._active += 1
            self._gauge.set(self._queued)
            self._cond.notify()
        request.future.add_done_callback(lambda _f: self._release(request))
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            done, _ = await asyncio.wait({request.future}, timeout=timeout)
        finally:
            request.future.cancel()   # no-op when answered
            self._release(request)    # now, not on the next loop iteration: an abandoned request leaves the queue
        if not done:
            DEADLINE_EXCEEDED.inc()
            raise DeadlineExceeded("the deadline passed while the request waited for the model")
        return request.future.result()

    def _release(self, request: _Request) -> None:
        """The request is answered, failed or abandoned by its caller: forget it (idempotent)."""
        with self._cond:
            if request.released:
                return
            request.released = True
            self._active -= 1
            self._drop(request)

    def _drop(self, request: _Request) -> None:
        """Stops the request's queued windows from running (lock held)."""
        request.dead = True
        self._queued -= request.queued
        request.queued = 0
        self._gauge.set(self._queued)

    async def drain(self, timeout: float | None = None) -> bool:
        """Waits until every submitted request is answered; False when `timeout` passed first."""
        end = None if timeout is None else time.monotonic() + timeout
        while self._active:
            if end is not None and time.monotonic() >= end:
                return False
            await asyncio.sleep(0.01)
        return True

    def close(self) -> None:
        """Fails what is still queued, stops the threads (a running forward pass completes)."""
        with self._cond:
            self._closing = True
            pending = {e.request for e in self._queue if not e.request.dead}
            self._queue.clear()
            for request in pending:
                self._drop(request)
            self._cond.notify_all()
        for request in pending:
            request.loop.call_soon_threadsafe(_fail, request.future, BatcherClosed("the model was unloaded"))
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=30)
        QUEUE_DEPTH.remove(self.label)

    # -- inference threads -------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)

    def _next_batch(self) -> list[_Entry] | None:
        cfg = self.config
        with self._cond:
            self._idle += 1
            try:
                while True:
                    if self._closing:
                        return None
                    self._purge_head()
                    if self._queue:
                        wait = self._queue[0].request.enqueued + cfg.max_delay_s - time.monotonic()
                        if self._queued >= cfg.batch_max_windows or wait <= 0:
                            break
                        self._cond.wait(timeout=wait)
                    else:
                        self._cond.wait()
                # Share the queue with the other idle threads: a long document runs on all of them.
                take = min(cfg.batch_max_windows, math.ceil(self._queued / self._idle))
                batch = self._select(take)
            finally:
                self._idle -= 1
            if self._queue:
                self._cond.notify()   # more work: wake another idle thread
            return batch

    def _purge_head(self) -> None:
        """Drops dead windows and expired requests from the head of the queue (lock held)."""
        now = time.monotonic()
        while self._queue:
            request = self._queue[0].request
            if request.dead:
                self._queue.popleft()
            elif request.deadline is not None and request.deadline <= now:
                self._expire(request)
            else:
                return

    def _expire(self, request: _Request) -> None:
        self._drop(request)
        DEADLINE_EXCEEDED.inc()
        request.loop.call_soon_threadsafe(
            _fail, request.future, DeadlineExceeded("the deadline passed before the request's windows ran"))

    def _select(self, take: int) -> list[_Entry]:
        """Up to `take` queued windows of similar length, the oldest one included (lock held)."""
        cfg = self.config
        now = time.monotonic()
        scanned: list[_Entry] = []
        while self._queue and len(scanned) < cfg.scan_windows:
            entry = self._queue.popleft()
            request = entry.request
            if request.dead:
                continue
            if request.deadline is not None and request.deadline <= now:
                self._expire(request)
                continue
            scanned.append(entry)
        if not scanned:
            return []
        anchor = scanned[0].length
        order = sorted(range(len(scanned)), key=lambda i: abs(scanned[i].length - anchor))
        chosen: set[int] = set()
        low = high = anchor
        for i in order:
            if len(chosen) >= take:
                break
            length = scanned[i].length
            new_low, new_high = min(low, length), max(high, length)
            if new_high - new_low > max(cfg.bucket_slack_tokens, (cfg.bucket_ratio - 1) * new_high):
                continue
            low, high = new_low, new_high
            chosen.add(i)
        batch: list[_Entry] = []
        keep: list[_Entry] = []
        for i, entry in enumerate(scanned):
            if i in chosen:
                batch.append(entry)
            elif not entry.request.dead:
                keep.append(entry)
        self._queue.extendleft(reversed(keep))
        for entry in batch:
            entry.request.queued -= 1
            QUEUE_WAIT.observe(now - entry.request.enqueued)
        self._queued -= len(batch)
        self._gauge.set(self._queued)
        return batch

    def _run(self, batch: list[_Entry]) -> None:
        if not batch:
            return
        windows = [e.request.windows[e.index] for e in batch]
        started = time.perf_counter()
        try:
            rows = self.model.forward(windows)
        except Exception as exc:
            log.exception("forward pass failed", extra={"model": self.label, "windows": len(batch)})
            with self._cond:
                failed = {e.request for e in batch if not e.request.dead}
                for request in failed:
                    self._drop(request)
            for request in failed:
                request.loop.call_soon_threadsafe(_fail, request.future, exc)
            return
        elapsed = time.perf_counter() - started
        FORWARD_LATENCY.observe(elapsed)
        INFERENCE_BATCH_WINDOWS.observe(len(batch))
        INFERENCE_BATCH_PADDING.observe(len(batch) * max(map(len, windows)) / sum(map(len, windows)))
        completed: list[_Request] = []
        with self._cond:
            self._seconds_per_window = 0.8 * self._seconds_per_window + 0.2 * elapsed / len(batch)
            for entry, row in zip(batch, rows, strict=True):
                request = entry.request
                if request.dead:
                    continue
                if request.outputs is None:
                    request.outputs = np.empty((len(request.windows), rows.shape[1]), dtype=np.float32)
                request.outputs[entry.index] = row
                request.remaining -= 1
                if request.remaining == 0:
                    completed.append(request)
        for request in completed:
            try:
                result = self._finish(request)
            except Exception as exc:
                log.exception("aggregation failed", extra={"model": self.label})
                request.loop.call_soon_threadsafe(_fail, request.future, exc)
            else:
                request.loop.call_soon_threadsafe(_succeed, request.future, result)

    def _finish(self, request: _Request) -> np.ndarray:
        assert request.outputs is not None
        results = []
        offset = 0
        for prepared in request.prepared:
            n = len(prepared.windows)
            results.append(self.model.finish(prepared, request.outputs[offset:offset + n]))
            offset += n
        return np.stack(results)


def _succeed(future: asyncio.Future[np.ndarray], result: np.ndarray) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[np.ndarray], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
