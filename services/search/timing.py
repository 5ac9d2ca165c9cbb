"""Where a search's time goes: per-stage wall times, for the response's `Server-Timing` header and /metrics.

A search records its stages into the `StageTimes` of its context (`started()` makes one; the semantic
ranking, a task created after it, shares it). Stages that run concurrently (the query vector is
computed while the lexical half runs) are each timed whole, so their sum may exceed the request's
time; `vector_wait` is what the hybrid path waited for the semantic ranking after its lexical half,
the part of the semantic work that lengthens the answer.

Stages: analyse (Kiwi over the query), lexical (the hybrid's first statement), embed (the query
vector: model-serving or the replica's cache), vectors (the tenant's vectors: a cache look, a refresh
or a first read), nearest (the ANN or exact nearest-neighbour search), vector_wait, page (the
statement that returns the page, total and facets), exhaustive and fallback (the reruns, when they
run), snippets (highlighted snippets of the page).
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from prometheus_client import Histogram

STAGE_SECONDS = Histogram(
    "doctag_search_stage_seconds", "Wall time of each stage of a search (see services/search/timing.py)",
    ["stage"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5),
)


class StageTimes:
    """Seconds per stage of one search, in the order the stages first ended."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def server_timing(self) -> str:
        """The W3C Server-Timing header value: `stage;dur=milliseconds, ...`."""
        return ", ".join(f"{stage};dur={seconds * 1000:.1f}" for stage, seconds in self.seconds.items())

    def observe(self) -> None:
        for stage, seconds in self.seconds.items():
            STAGE_SECONDS.labels(stage).observe(seconds)


_current: ContextVar[StageTimes | None] = ContextVar("search_stage_times", default=None)


def started() -> StageTimes:
    """A new record for the search running in this context (and the tasks it creates from now on)."""
    times = StageTimes()
    _current.set(times)
    return times


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Times the block as stage `name` of the current search (nothing is recorded outside one)."""
    began = time.perf_counter()
    try:
        yield
    finally:
        times = _current.get()
        if times is not None:
            times.add(name, time.perf_counter() - began)
