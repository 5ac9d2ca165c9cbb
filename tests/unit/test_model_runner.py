"""ModelRunner: input limits, defaults, and answers before the model is loaded."""
from __future__ import annotations

import pytest

from services.model_serving.runner import InputError, ModelNotReady, ModelRunner
from services.model_serving.settings import DEFAULT_MODEL_DIR, ModelServingSettings


@pytest.fixture()
def runner() -> ModelRunner:
    r = ModelRunner(ModelServingSettings(max_texts=3, max_text_chars=50, top_k=3, model_dir=DEFAULT_MODEL_DIR))
    yield r
    r.close()


def test_settings_defaults_point_at_the_committed_model() -> None:
    s = ModelServingSettings()
    assert s.model_dir == DEFAULT_MODEL_DIR and (s.model_dir / "manifest.json").is_file()
    assert (s.http_port, s.grpc_port, s.max_texts, s.max_windows) == (8121, 9121, 64, 16)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCTAG_MAX_WINDOWS", "4")
    monkeypatch.setenv("DOCTAG_TORCH_THREADS", "1")
    s = ModelServingSettings()
    assert s.max_windows == 4 and s.torch_threads == 1


@pytest.mark.parametrize(("texts", "batch", "field"), [
    ([""], False, "text"),
    (["   \n"], False, "text"),
    (["x" * 51], False, "text"),
    ([], True, "texts"),
    (["a", "b", "c", "d"], True, "texts"),
    (["ok", ""], True, "texts.1"),
    (["ok", "y" * 51], True, "texts.1"),
])
def test_invalid_input_names_the_field(runner: ModelRunner, texts: list[str], batch: bool, field: str) -> None:
    with pytest.raises(InputError) as info:
        runner.validate(texts, "texts" if batch else "text", batch=batch)
    assert info.value.field == field


def test_valid_input_passes(runner: ModelRunner) -> None:
    runner.validate(["a", "b", "x" * 50], "texts", batch=True)
    runner.validate(["한국어 문장"], "text", batch=False)


def test_top_k_default_and_negative(runner: ModelRunner) -> None:
    assert runner.resolve_top_k(None) == 3
    assert runner.resolve_top_k(0) == 3
    assert runner.resolve_top_k(5) == 5
    with pytest.raises(InputError):
        runner.resolve_top_k(-1)


async def test_not_ready_until_loaded(runner: ModelRunner) -> None:
    with pytest.raises(ModelNotReady, match="loading"):
        await runner.ready_check()
    with pytest.raises(ModelNotReady):
        await runner.predict(["경제 뉴스"], 3)
    await runner.load()
    await runner.ready_check()
    assert runner.resolve_top_k(100) == 24, "top_k is capped at the number of labels"
    info, tags = await runner.predict(["경제 뉴스"], 2)
    assert info.name == "doctag-tagger" and 1 <= len(tags[0]) <= 2


async def test_failed_load_is_reported(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = ModelRunner(ModelServingSettings(model_dir=tmp_path))
    try:
        with pytest.raises(Exception, match="manifest.json is missing"):
            await r.load()
        with pytest.raises(ModelNotReady, match="failed to load: ModelIntegrityError"):
            await r.ready_check()
    finally:
        r.close()
