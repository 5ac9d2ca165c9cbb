"""The committed model artifact (e5-hybrid): checksums, refusal of tampered files, the pretrained
base it names, labels, windowing of long texts, probabilities, and plausibility on obvious inputs.

Everything goes through the architecture-agnostic API (`inference.load_model`, `probabilities`,
`predict_detailed`), the path model-serving and `doctag model eval` use. Loading builds a
12-layer encoder (several seconds), so the model is loaded once for the module.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from services.model_serving.models.base import (
    InferenceOptions,
    WindowModel,
    predict_detailed,
    probabilities,
)
from services.model_serving.models.e5_base import BASE_SHA256, find_base_file
from services.model_serving.models.loader import load_model
from services.model_serving.models.manifest import (
    ModelIntegrityError,
    read_verified_manifest,
    required_files,
    sha256_file,
)
from services.model_serving.settings import DEFAULT_MODEL_DIR

MANIFEST = json.loads((DEFAULT_MODEL_DIR / "manifest.json").read_text(encoding="utf-8"))
HEADLINE_LABELS = ["IT과학", "경제", "사회", "생활문화", "세계", "스포츠", "정치"]
PETITION_LABELS = ["경제민주화", "교통/건축/국토", "기타", "농산어촌", "문화/예술/체육/언론",
                   "미래", "반려동물", "보건복지", "성장동력", "안전/환경", "외교/통일/국방", "육아/교육",
                   "인권/성평등", "일자리", "저출산/고령화대책", "정치개혁", "행정"]
MAX_ARTIFACT_BYTES = 50 * 1024 * 1024   # the most the committed artifact may weigh, all files together


@pytest.fixture(scope="module")
def model() -> WindowModel:
    return load_model(DEFAULT_MODEL_DIR, InferenceOptions())


@pytest.fixture(scope="module")
def _pristine_copy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """One copy of the artifact per module, with the original bytes of every file."""
    target = tmp_path_factory.mktemp("artifact") / "doctag-tagger"
    shutil.copytree(DEFAULT_MODEL_DIR, target)
    return target, {p.name: p.read_bytes() for p in target.iterdir()}


@pytest.fixture()
def artifact_copy(_pristine_copy: tuple[Path, dict[str, bytes]]) -> Iterator[Path]:
    """The module's copy, for a test to damage; put back as it was afterwards."""
    target, original = _pristine_copy
    yield target
    for path in target.iterdir():
        if path.name not in original:
            path.unlink()
    for name, data in original.items():
        path = target / name
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_manifest(directory: Path, edit) -> None:  # type: ignore[no-untyped-def]
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    edit(manifest)
    path.write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")


def _top3(model: WindowModel, texts: list[str]) -> list[list[str]]:
    probs = probabilities(model, texts)
    return [[model.labels[i] for i in np.argsort(-row, kind="stable")[:3]] for row in probs]


# -- the files ---------------------------------------------------------------------------------

def test_committed_artifact_matches_its_manifest() -> None:
    manifest, digest = read_verified_manifest(DEFAULT_MODEL_DIR)
    assert digest == sha256_file(DEFAULT_MODEL_DIR / "manifest.json")
    assert manifest["architecture"] == "e5-hybrid"
    listed = set(manifest["files"])
    on_disk = {p.name for p in DEFAULT_MODEL_DIR.iterdir() if p.name != "manifest.json"}
    assert listed == on_disk, "every file except the manifest is listed"
    assert set(required_files(manifest)) <= listed
    total = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir())
    assert total <= MAX_ARTIFACT_BYTES, f"the artifact is {total} bytes; committed artifacts stay within 50 MB"


def test_base_weights_named_by_the_manifest_are_the_installed_ones() -> None:
    base = MANIFEST["base"]
    path = find_base_file()
    assert path.name == base["file"]
    assert base["sha256"] == BASE_SHA256 == sha256_file(path)
    package, _, version = base["package"].partition("==")
    assert importlib.metadata.version(package) == version


@pytest.mark.parametrize("name", sorted(MANIFEST["files"]))
def test_flipped_byte_in_any_file_is_refused_naming_it(artifact_copy: Path, name: str) -> None:
    target = artifact_copy / name
    _flip_byte(target, target.stat().st_size // 2)
    with pytest.raises(ModelIntegrityError, match=f"{re.escape(name)} does not match the manifest"):
        load_model(artifact_copy)


def test_missing_file_is_refused_naming_it(artifact_copy: Path) -> None:
    (artifact_copy / "lexical.json").unlink()
    with pytest.raises(ModelIntegrityError, match=r"lexical\.json.*missing"):
        load_model(artifact_copy)


@pytest.mark.parametrize("name", ["head.safetensors", "encoder_delta.safetensors", "lexical.json"])
def test_manifest_without_a_required_file_is_refused(artifact_copy: Path, name: str) -> None:
    _edit_manifest(artifact_copy, lambda m: m["files"].pop(name))
    with pytest.raises(ModelIntegrityError, match=f"{re.escape(name)} is not listed"):
        load_model(artifact_copy)


def test_manifest_path_outside_the_directory_is_refused(artifact_copy: Path) -> None:
    _edit_manifest(artifact_copy, lambda m: m["files"].__setitem__("../escape.txt", "0" * 64))
    with pytest.raises(ModelIntegrityError, match="leaves the model directory"):
        load_model(artifact_copy)


def test_manifest_labels_that_do_not_fit_the_head_are_refused(artifact_copy: Path) -> None:
    _edit_manifest(artifact_copy, lambda m: m["labels"].pop())
    with pytest.raises(ModelIntegrityError, match=r"head\.safetensors"):
        load_model(artifact_copy)


def test_manifest_labels_in_another_order_are_refused(artifact_copy: Path) -> None:
    """The head records which label each output row is: a reordered manifest would mislabel every tag."""
    _edit_manifest(artifact_copy, lambda m: m["labels"].reverse())
    with pytest.raises(ModelIntegrityError, match="labels"):
        load_model(artifact_copy)


def test_no_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelIntegrityError, match=r"manifest\.json is missing"):
        load_model(tmp_path)


# -- the manifest ------------------------------------------------------------------------------

def test_labels_are_the_manifests(model: WindowModel) -> None:
    assert model.name == MANIFEST["name"] == "doctag-tagger" and model.version == MANIFEST["version"]
    assert model.labels == MANIFEST["labels"] and len(set(model.labels)) == len(model.labels)
    assert model.manifest_sha256 == sha256_file(DEFAULT_MODEL_DIR / "manifest.json")


def test_labels_cover_both_data_sets(model: WindowModel) -> None:
    """Holds for the shipped model trained on all of ../shared/data (a model trained on a
    small subset may miss the rarest petition categories)."""
    assert sorted(model.labels) == sorted(HEADLINE_LABELS + PETITION_LABELS)


def test_manifest_records_training_and_validation(model: WindowModel) -> None:
    manifest = model.manifest
    assert manifest["training"]["seed"] == 13 and manifest["training"]["seconds"]["total"] > 0
    for dataset, filename in (("headlines", "headlines_train.jsonl"), ("petitions", "petitions_train.jsonl")):
        data = manifest["training_data"][dataset]
        assert data["file"] == filename and len(data["sha256"]) == 64
        assert data["train"] > 0 and data["validation"] > 0
        metrics = manifest["metrics"]["validation"][dataset]
        assert metrics["n"] == data["validation"]
        assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["macro_f1"] <= 1.0
        assert set(metrics["per_label"]) <= set(model.labels)
    assert set(manifest["metrics"]["validation"]["headlines"]["per_label"]) <= set(HEADLINE_LABELS)


# -- reading texts -----------------------------------------------------------------------------

def test_long_text_is_windowed_within_the_cap_not_truncated(model: WindowModel) -> None:
    text = "국민청원 보건복지 의료 정책에 관한 의견입니다. " * 600  # ~16,000 characters
    long, short = model.prepare([text, "짧은 제목"])
    cap = min(InferenceOptions().max_windows, MANIFEST["hybrid"]["max_windows"])
    window_tokens = MANIFEST["hybrid"]["window_tokens"]
    assert long.n_tokens > cap * window_tokens, "the text is longer than the windows can hold"
    assert len(long.windows) == cap
    assert len(short.windows) == 1
    tokenizer = model.tokenizer  # type: ignore[attr-defined]
    all_ids = tokenizer.encode([text])[0]
    prefix = tokenizer.encode([MANIFEST["hybrid"]["prefix"].strip()])[0]
    for window in long.windows + short.windows:
        assert len(window) <= window_tokens
        assert window[:1 + len(prefix)] == [tokenizer.bos_id, *prefix] and window[-1] == tokenizer.eos_id
    content = window_tokens - 2 - len(prefix)
    assert long.windows[0][1 + len(prefix):-1] == all_ids[:content], "the beginning is read"
    assert long.windows[-1][1 + len(prefix):-1] == all_ids[-content:], "the end of the text is read too"
    [detail] = predict_detailed(model, [text], top_k=3)
    assert detail.n_windows == cap and detail.n_tokens == len(all_ids)


def test_predictions_are_probabilities_best_first(model: WindowModel) -> None:
    probs = probabilities(model, ["정부, 내년도 예산안 국회 제출", "손흥민 골"])
    assert probs.shape == (2, len(model.labels))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert (probs >= 0).all()
    [detail] = predict_detailed(model, ["정부, 내년도 예산안 국회 제출"], top_k=len(model.labels))
    scores = [s for _, s in detail.tags]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-5
    assert detail.n_windows == 1
    assert scores[0] == pytest.approx(float(probs[0].max()), abs=1e-6)


def test_a_text_scores_the_same_alone_and_in_a_batch(model: WindowModel) -> None:
    texts = ["코스피 급락", "국회 본회의 추경 처리 " * 80, "새 스마트폰 출시"]
    together = probabilities(model, texts)
    for i, text in enumerate(texts):
        np.testing.assert_allclose(probabilities(model, [text])[0], together[i], atol=1e-5)


# -- PLAUSIBILITY: holds for a decently trained model (the shipped one), not for random weights --

PLAUSIBLE = [
    ("손흥민 시즌 10호 골…토트넘 역전승", "스포츠"),
    ("류현진, 7이닝 무실점 호투로 시즌 5승", "스포츠"),
    ("코스피 2% 급락…외국인 매도에 환율 1,400원 돌파", "경제"),
    ("새 스마트폰 AI 칩 탑재…배터리 수명 향상", "IT과학"),
    ("미국 대선 앞두고 트럼프 지지율 상승", "세계"),
    ("어린이집 보육교사 처우 개선\n어린이집 보육교사의 처우를 개선하고 아이들의 교육 환경을 개선해 주세요. "
     "유치원과 어린이집 교육비 지원도 늘려야 합니다.", "육아/교육"),
    ("유기견 보호소 지원을 늘려주세요\n반려동물 학대 처벌을 강화하고 유기견 보호소에 대한 지원을 확대해 주십시오. "
     "버려지는 강아지와 고양이가 매년 늘고 있습니다.", "반려동물"),
]


def test_plausible_tags_for_obvious_inputs(model: WindowModel) -> None:
    """PLAUSIBILITY: the expected tag is among the top 3 of each clear headline or petition."""
    top3 = _top3(model, [text for text, _ in PLAUSIBLE])
    misses = [(text[:30], expected, got) for (text, expected), got in zip(PLAUSIBLE, top3, strict=True)
              if expected not in got]
    assert not misses, misses


def test_onnx_runtime_encoder_gives_the_torch_scores(model: WindowModel) -> None:
    """model-serving runs the encoder with ONNX Runtime (onnx_encoder.py): same numbers as torch.

    The export goes to the tests' shared cache (DOCTAG_ONNX_CACHE_DIR, see tests/conftest.py), so it
    is made once per machine and model, and the services the tests start reuse it."""
    cache = Path(os.environ["DOCTAG_ONNX_CACHE_DIR"])
    texts = ["코스피 2,600선 회복…외국인 순매수", "손흥민 시즌 10호골", "정부는 내년도 예산안을 국회에 제출했다. " * 60]
    onnx_model = load_model(DEFAULT_MODEL_DIR, InferenceOptions(onnx=True, onnx_cache_dir=cache))
    assert list(cache.glob("e5-encoder-*.onnx")), "the export is cached for the next start"
    np.testing.assert_allclose(probabilities(onnx_model, texts), probabilities(model, texts), atol=1e-5)
