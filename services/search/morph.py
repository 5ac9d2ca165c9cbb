"""Morphemes with their position in the text, for snippets and title boosts.

`services.common.korean` is the analyser the index is built with; here it also analyses
queries and tells where each term stands in a snippet's text, so a query for 늘리다 can
highlight 늘렸다. CPU work: call it from a
worker thread (`asyncio.to_thread`), never on the event loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from prometheus_client import Gauge

from services.common import korean
from services.common.korean import Morpheme

from . import query

log = logging.getLogger(__name__)
ANALYSER_LOAD_SECONDS = Gauge("doctag_search_analyser_load_seconds",
                              "Time the Korean analyser took to load and analyse its first text (0 until loaded)")

# Kiwi handles up to this many characters in one call quickly (see korean._chunks).
MAX_SPAN_CHARS = 5000


@dataclass(frozen=True)
class AnalyzedQuery:
    text: str
    terms: tuple[str, ...]     # ranked terms: free words and phrase words (korean.analyze)
    excluded: tuple[str, ...]  # terms of -words
    phrases: tuple[str, ...]   # "quoted" phrases as written


def morphemes(text: str, max_chars: int = MAX_SPAN_CHARS) -> list[Morpheme]:
    """Terms of the first `max_chars` characters of `text`, with offsets."""
    return korean.morphemes(text[:max_chars])


def analyze_query(text: str) -> AnalyzedQuery:
    """The query's operators, its words analysed exactly as documents are at upload."""
    parts = query.parse_operators(text)
    terms = dict.fromkeys(korean.analyze(" ".join((*parts.words, *parts.phrases))))
    excluded = dict.fromkeys(korean.analyze(" ".join(parts.excluded)))
    return AnalyzedQuery(text=text, terms=tuple(t for t in terms if t not in excluded),
                         excluded=tuple(excluded), phrases=parts.phrases)


# Warm-up text: one analysis loads Kiwi's model and runs its first (slowest) tokenisation.
WARM_UP_TEXT = "정부는 내년도 예산을 크게 늘렸다."


class Analyser:
    """Loads the Korean analyser before the service says it is ready.

    Kiwi loads lazily on first use, and that takes seconds (its first tokenisation also holds
    the GIL): without a warm-up the first query after /readyz paid for it and could time out.
    `start()` begins loading in a worker thread; `check` is a readiness check that fails until
    the load has finished; `wait()` returns when it has (and raises when it failed).
    """

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.create_task(self._load(), name="analyser-warm-up")
        return self._task

    async def _load(self) -> None:
        started = time.perf_counter()
        try:
            await asyncio.to_thread(analyze_query, WARM_UP_TEXT)
        except Exception:
            log.exception("the Korean analyser failed to load")
            raise
        elapsed = time.perf_counter() - started
        ANALYSER_LOAD_SECONDS.set(elapsed)
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
