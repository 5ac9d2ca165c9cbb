"""Loads the Korean analyser before a service says it is ready.

Kiwi loads lazily on first use, and that takes seconds (its first tokenisation also holds the
GIL): without a warm-up the first request after /readyz pays for it (a search could time out;
an upload replica spent its first seconds of a bulk load building the model instead of
indexing). `start()` begins loading in a worker thread; `check` is a readiness check that
fails until the load has finished; `wait()` returns when it has (and raises when it failed).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from services.common import korean

log = logging.getLogger(__name__)

# One analysis loads Kiwi's model and runs its first (slowest) tokenisation.
WARM_UP_TEXT = "정부는 내년도 예산을 크게 늘렸다."


def _analyse_warm_up_text() -> None:
    korean.analyze(WARM_UP_TEXT)


class AnalyserWarmUp:
    """`load` runs once in a worker thread; `on_loaded(seconds)` records how long it took."""

    def __init__(self, load: Callable[[], object] = _analyse_warm_up_text,
                 on_loaded: Callable[[float], None] | None = None) -> None:
        self._load_fn = load
        self._on_loaded = on_loaded
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.create_task(self._load(), name="analyser-warm-up")
        return self._task

    async def _load(self) -> None:
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self._load_fn)
        except Exception:
            log.exception("the Korean analyser failed to load")
            raise
        elapsed = time.perf_counter() - started
        if self._on_loaded is not None:
            self._on_loaded(elapsed)
        log.info("Korean analyser loaded", extra={"duration_ms": round(elapsed * 1000, 1)})

    @property
    def loaded(self) -> bool:
        task = self._task
        return task is not None and task.done() and not task.cancelled() and task.exception() is None

    async def wait(self) -> None:
        await asyncio.shield(self.start())

    async def check(self) -> None:
        task = self._task
        if task is None or not task.done():
            raise RuntimeError("the Korean analyser is still loading")
        if task.cancelled():
            raise RuntimeError("the Korean analyser warm-up was cancelled")
        if task.exception() is not None:
            raise RuntimeError(f"the Korean analyser failed to load: {task.exception()}")

    async def close(self) -> None:
        """Stops waiting for a load still running (the thread itself finishes on its own)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
