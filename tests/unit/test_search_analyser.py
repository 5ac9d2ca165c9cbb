"""The search replica's analyser warm-up: not ready before the load, ready after it, and a
failed or abandoned load reported as such (readiness stays false)."""
from __future__ import annotations

import threading

import pytest

from services.common import korean
from services.search import morph
from services.search.morph import Analyser


async def test_not_ready_before_start_ready_after_the_load() -> None:
    analyser = Analyser()
    with pytest.raises(RuntimeError, match="still loading"):
        await analyser.check()
    assert not analyser.loaded
    await analyser.wait()  # starts the load when nothing else did
    await analyser.check()
    assert analyser.loaded
    assert korean._build_kiwi.cache_info().currsize == 1  # the Kiwi instance every query uses exists now
    assert morph.ANALYSER_LOAD_SECONDS._value.get() > 0


async def test_a_failed_load_is_reported_and_never_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(text: str) -> morph.AnalyzedQuery:
        raise OSError("kiwipiepy model files not found")

    monkeypatch.setattr(morph, "analyze_query", broken)
    analyser = Analyser()
    with pytest.raises(OSError, match="model files not found"):
        await analyser.wait()
    with pytest.raises(RuntimeError, match="failed to load: kiwipiepy model files not found"):
        await analyser.check()
    assert not analyser.loaded


async def test_close_abandons_a_load_still_running(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def slow(text: str) -> morph.AnalyzedQuery:
        release.wait(10)  # a load that outlasts the service's shutdown
        return morph.AnalyzedQuery(text, (), ())

    monkeypatch.setattr(morph, "analyze_query", slow)
    analyser = Analyser()
    analyser.start()
    try:
        await analyser.close()
        with pytest.raises(RuntimeError, match="cancelled"):
            await analyser.check()
        assert not analyser.loaded
    finally:
        release.set()
