"""ModelRunner: input limits, defaults, answers before the model is loaded, model references,
hot swap of the default model, refusal of a corrupted version, and the inference log."""
from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from services.model_serving.resolved import (
    ResolvedModel,
    StaticResolver,
    UnknownModel,
    parse_model_ref,
)
from services.model_serving.runner import (
    InputError,
    ModelNotFound,
    ModelNotReady,
    ModelRefused,
    ModelRunner,
)
from services.model_serving.settings import DEFAULT_MODEL_DIR, ModelServingSettings
from tests.model_artifacts import make_tiny_bert


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
    manifest = json.loads((DEFAULT_MODEL_DIR / "manifest.json").read_text(encoding="utf-8"))
    assert runner.resolve_top_k(100) == len(manifest["labels"]), "top_k is capped at the number of labels"
    info, tags = await runner.predict(["경제 뉴스"], 2)
    assert info.name == "doctag-tagger" and 1 <= len(tags[0]) <= 2


async def test_failed_load_is_reported(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = ModelRunner(ModelServingSettings(model_dir=tmp_path))
    try:
        with pytest.raises(Exception, match=r"manifest\.json is missing"):
            await r.load()
        with pytest.raises(ModelNotReady, match="failed to load: ModelIntegrityError"):
            await r.ready_check()
    finally:
        r.close()


# -- model references, hot swap, refusal, inference log ----------------------------------------

class SwitchableResolver:
    """A resolver over artifact directories keyed by version; `default` says which is production."""

    def __init__(self, directories: dict[str, Path], default: str) -> None:
        self.resolvers = {v: StaticResolver(d) for v, d in directories.items()}
        self.default = default

    async def __call__(self, ref: str | None) -> ResolvedModel:
        _name, selector = parse_model_ref(ref)
        version = self.default if selector == "production" else selector
        if version not in self.resolvers:
            raise UnknownModel(f"no version {selector!r}")
        return await self.resolvers[version](None)


class RecordingLog:
    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def record(self, *args: object) -> None:
        self.rows.append(args)


@pytest.fixture(scope="module")
def tiny_versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-versions")
    return {v: make_tiny_bert(root / f"v{v}", name="tiny", version=v, seed=int(v)) for v in ("1", "2")}


def _tiny_runner(resolver: SwitchableResolver, **overrides: object) -> ModelRunner:
    settings = ModelServingSettings(model_refresh_s=3600, inference_threads=1, **overrides)
    return ModelRunner(settings, resolver=resolver, inference_log=RecordingLog())


async def test_swap_to_a_new_default_under_load_drops_no_request(tiny_versions: dict[str, Path]) -> None:
    resolver = SwitchableResolver(tiny_versions, default="1")
    runner = _tiny_runner(resolver)
    try:
        await runner.load()
        old_batcher = runner._default.batcher  # type: ignore[union-attr]
        stop = asyncio.Event()
        versions: list[str] = []

        async def client(i: int) -> None:
            while not stop.is_set() or not versions or versions[-1] != "2":
                info, tags = await runner.predict([f"손흥민 {i}호 골 " * (1 + i % 7)], 2)
                versions.append(info.version)
                assert tags[0]

        clients = [asyncio.create_task(client(i)) for i in range(8)]
        await asyncio.sleep(0.05)
        resolver.default = "2"
        assert await runner.refresh() is True
        stop.set()
        await asyncio.wait_for(asyncio.gather(*clients), 30)   # re-raises any failed request
        assert "1" in versions and versions[-1] == "2"
        assert runner.info is not None and runner.info.version == "2"
        assert await runner.refresh() is False, "nothing changes while the default stays"
        # v1 stays loaded for a quick rollback (max_loaded_models=2) and answers when named.
        info, _ = await runner.predict(["코스피 급락"], 1, model="tiny:1")
        assert info.version == "1" and not info.default
        assert {(m.version, m.default) for m in runner.loaded_models()} == {("1", False), ("2", True)}
        assert old_batcher.active_requests == 0
    finally:
        await runner.aclose()


async def test_evicted_model_is_closed_after_draining(tiny_versions: dict[str, Path]) -> None:
    resolver = SwitchableResolver(tiny_versions, default="1")
    runner = _tiny_runner(resolver, max_loaded_models=1)
    try:
        await runner.load()
        old = runner._default
        assert old is not None
        request = asyncio.create_task(runner.predict(["정부 예산안 " * 30], 1))
        await asyncio.sleep(0)
        resolver.default = "2"
        await runner.refresh()
        info, _ = await request
        assert info.version == "1", "a request that started on v1 finishes on it"
        for _ in range(200):
            if old.batcher._closing:
                break
            await asyncio.sleep(0.01)
        assert old.batcher._closing and [m.version for m in runner.loaded_models()] == ["2"]
    finally:
        await runner.aclose()


async def test_model_reference_unknown_and_refused(tiny_versions: dict[str, Path], tmp_path: Path) -> None:
    broken = make_tiny_bert(tmp_path / "v3", name="tiny", version="3", seed=3)
    data = bytearray((broken / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "model.safetensors").write_bytes(bytes(data))
    resolver = SwitchableResolver({**tiny_versions, "3": broken}, default="1")
    runner = _tiny_runner(resolver)
    try:
        await runner.load()
        with pytest.raises(ModelNotFound):
            await runner.predict(["뉴스"], 1, model="tiny:9")
        resolver.default = "3"
        with pytest.raises(ModelRefused, match=rf"model tiny:3 in {broken} is refused: .*model\.safetensors"):
            await runner.refresh()
        assert await runner.refresh() is False, "a refused version is not retried at every refresh"
        with pytest.raises(ModelRefused, match=r"model\.safetensors"):
            await runner.predict(["뉴스"], 1, model="3")
        info, _ = await runner.predict(["뉴스"], 1)
        assert info.version == "1", "the previous default keeps serving"
        await runner.ready_check()
    finally:
        await runner.aclose()


async def test_every_prediction_is_logged_without_the_text(tiny_versions: dict[str, Path]) -> None:
    runner = _tiny_runner(SwitchableResolver(tiny_versions, default="2"))
    try:
        await runner.load()
        await runner.predict(["코스피 급락", "손흥민 골"], 2, tenant_id="t-1")
        [row] = runner.inference_log.rows  # type: ignore[union-attr]
        tenant, model, version, latency_ms, tags, hashes, _request_id = row
        assert (tenant, model, version) == ("t-1", "tiny", "2") and latency_ms > 0
        assert len(tags) == 2
        assert hashes == [hashlib.sha256(t.encode()).hexdigest() for t in ("코스피 급락", "손흥민 골")]
    finally:
        await runner.aclose()


async def test_static_resolver_follows_a_repointed_symlink(tiny_versions: dict[str, Path], tmp_path: Path) -> None:
    link = tmp_path / "current"
    link.symlink_to(tiny_versions["1"])
    resolver = StaticResolver(link)
    assert (await resolver(None)).version == "1"
    assert (await resolver("tiny:1")).version == (await resolver("production")).version == "1"
    with pytest.raises(UnknownModel):
        await resolver("tiny:2")
    tmp = tmp_path / "next"
    tmp.symlink_to(tiny_versions["2"])
    tmp.replace(link)
    assert (await resolver(None)).version == "2"


@pytest.mark.parametrize(("ref", "parsed"), [(None, (None, "production")), ("", (None, "production")),
                                             ("tiny:3", ("tiny", "3")), ("tiny@candidate", ("tiny", "candidate")),
                                             ("7", (None, "7")), ("candidate", (None, "candidate"))])
def test_parse_model_ref(ref: str | None, parsed: tuple[str | None, str]) -> None:
    assert parse_model_ref(ref) == parsed


@pytest.mark.parametrize("ref", ["tiny:", ":3", "@x"])
def test_parse_model_ref_refuses_half_references(ref: str) -> None:
    with pytest.raises(UnknownModel):
        parse_model_ref(ref)


async def test_a_named_version_is_served_even_with_room_for_one_model(tiny_versions: dict[str, Path]) -> None:
    runner = _tiny_runner(SwitchableResolver(tiny_versions, default="2"), max_loaded_models=1)
    try:
        await runner.load()
        for _ in range(2):
            info, _ = await runner.predict(["코스피 급락"], 1, model="1")
            assert info.version == "1"
        info, _ = await runner.predict(["코스피 급락"], 1)
        assert info.version == "2" and info.default
    finally:
        await runner.aclose()


async def test_a_version_missing_from_the_store_is_named_with_its_path(tmp_path: Path, caplog) -> None:
    """The registry points at a directory the store lost: the log and /readyz name the version and the path."""
    gone = tmp_path / "store" / "tiny" / "2"

    async def resolver(ref: str | None) -> ResolvedModel:
        return ResolvedModel("tiny", "2", gone, "0" * 64)

    runner = ModelRunner(ModelServingSettings(model_refresh_s=3600), resolver=resolver)
    try:
        with caplog.at_level("ERROR", logger="services.model_serving.runner"):
            await runner.start()
        with pytest.raises(ModelNotReady, match=rf"model tiny:2 in {gone} is refused: .*manifest\.json is missing"):
            await runner.ready_check()
        refused = next(r for r in caplog.records if r.msg == "model refused")
        assert (refused.model, refused.version, refused.path) == ("tiny", "2", str(gone))
        failed = next(r for r in caplog.records if r.msg == "model could not be loaded")
        assert f"tiny:2 in {gone}" in failed.error
    finally:
        await runner.aclose()


async def test_refresh_soon_re_resolves_without_waiting_the_interval(tiny_versions: dict[str, Path]) -> None:
    resolver = SwitchableResolver(tiny_versions, default="1")
    runner = _tiny_runner(resolver)   # model_refresh_s=3600
    try:
        await runner.start()
        assert runner.info is not None and runner.info.version == "1"
        resolver.default = "2"
        runner.refresh_soon()
        for _ in range(500):
            if runner.info.version == "2":
                break
            await asyncio.sleep(0.02)
        assert runner.info.version == "2"
    finally:
        await runner.aclose()


async def test_embed_refused_when_embeddings_are_switched_off() -> None:
    from services.model_serving.runner import ModelRefused

    runner = ModelRunner(ModelServingSettings(embeddings=False, model_dir=DEFAULT_MODEL_DIR))
    try:
        with pytest.raises(ModelRefused, match="disabled"):
            await runner.embed(["예산"], "query")
    finally:
        runner.close()
