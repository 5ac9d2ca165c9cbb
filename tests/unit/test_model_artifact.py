"""The committed model artifact: checksum refusal, label order, windowing of real token ids."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from services.model_serving.inference import InferenceOptions, TaggingModel, encode_windows
from services.model_serving.manifest import ModelIntegrityError, read_verified_manifest, sha256_file
from services.model_serving.settings import DEFAULT_MODEL_DIR

HEADLINE_LABELS = ["IT과학", "경제", "사회", "생활문화", "세계", "스포츠", "정치"]


@pytest.fixture(scope="module")
def model() -> TaggingModel:
    return TaggingModel.load(DEFAULT_MODEL_DIR, options=InferenceOptions(max_windows=16), torch_threads=1)


@pytest.fixture()
def artifact_copy(tmp_path: Path) -> Path:
    target = tmp_path / "doctag-tagger"
    shutil.copytree(DEFAULT_MODEL_DIR, target)
    return target


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_committed_artifact_matches_its_manifest() -> None:
    manifest, digest = read_verified_manifest(DEFAULT_MODEL_DIR)
    assert digest == sha256_file(DEFAULT_MODEL_DIR / "manifest.json")
    listed = set(manifest["files"])
    on_disk = {p.name for p in DEFAULT_MODEL_DIR.iterdir() if p.name != "manifest.json"}
    assert listed == on_disk, "every file except the manifest is listed"
    for path in DEFAULT_MODEL_DIR.iterdir():
        assert path.stat().st_size < 20 * 1024 * 1024, f"{path.name} must stay below 20 MB"


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json", "config.json"])
def test_flipped_byte_is_refused_naming_the_file(artifact_copy: Path, name: str) -> None:
    target = artifact_copy / name
    _flip_byte(target, target.stat().st_size // 2)
    with pytest.raises(ModelIntegrityError, match=name.replace(".", r"\.")):
        TaggingModel.load(artifact_copy)


def test_missing_file_is_refused_naming_it(artifact_copy: Path) -> None:
    (artifact_copy / "tokenizer_config.json").unlink()
    with pytest.raises(ModelIntegrityError, match=r"tokenizer_config\.json.*missing"):
        TaggingModel.load(artifact_copy)


def test_manifest_without_a_required_file_is_refused(artifact_copy: Path) -> None:
    manifest_path = artifact_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    del manifest["files"]["model.safetensors"]
    manifest_path.write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ModelIntegrityError, match=r"model\.safetensors is not listed"):
        TaggingModel.load(artifact_copy)


def test_manifest_path_outside_the_directory_is_refused(artifact_copy: Path) -> None:
    manifest_path = artifact_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["files"]["../escape.txt"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ModelIntegrityError, match="leaves the model directory"):
        TaggingModel.load(artifact_copy)


def test_no_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelIntegrityError, match="manifest.json is missing"):
        TaggingModel.load(tmp_path)


def test_labels_are_the_union_in_model_order(model: TaggingModel) -> None:
    manifest = model.manifest
    assert model.labels == manifest["labels"]
    assert model.labels == [model.model.config.id2label[i] for i in range(24)]
    assert len(model.labels) == 24 == len(set(model.labels))
    assert model.labels[:7] == HEADLINE_LABELS
    assert manifest["label_sets"]["headlines"] == HEADLINE_LABELS
    assert len(manifest["label_sets"]["petitions"]) == 17
    assert {"보건복지", "행정", "교통/건축/국토", "육아/교육", "기타"} <= set(manifest["label_sets"]["petitions"])


def test_reordered_manifest_labels_are_refused(artifact_copy: Path) -> None:
    manifest_path = artifact_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["labels"] = list(reversed(manifest["labels"]))
    manifest_path.write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ModelIntegrityError, match="labels"):
        TaggingModel.load(artifact_copy)


def test_manifest_records_training_and_validation(model: TaggingModel) -> None:
    manifest = model.manifest
    assert manifest["name"] == "doctag-tagger" and manifest["version"] == "1"
    assert manifest["created_at"].endswith("Z")
    data = manifest["training_data"]["datasets"]
    assert data["headlines"]["rows"] == data["headlines"]["train_rows"] + data["headlines"]["val_rows"]
    assert len(data["petitions"]["sha256"]) == 64
    for dataset in ("headlines", "petitions"):
        metrics = manifest["validation"][dataset]
        assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["macro_f1"] <= 1.0
        assert set(metrics["per_label_f1"]) == set(manifest["label_sets"][dataset])
    assert manifest["training"]["wall_time_s"] > 0


def test_long_text_is_windowed_not_truncated(model: TaggingModel) -> None:
    text = "국민청원 보건복지 의료 정책에 관한 의견입니다. " * 600  # ~16,000 characters
    windows, owners, n_tokens = encode_windows(model.tokenizer, [text, "짧은 제목"], max_length=model.max_length,
                                               overlap=32, max_windows=16)
    long_windows = [w for w, o in zip(windows, owners) if o == 0]
    assert n_tokens[0] > model.max_length
    assert 1 < len(long_windows) <= 16
    assert owners.count(1) == 1
    cls_id, sep_id = model.tokenizer.cls_token_id, model.tokenizer.sep_token_id
    for window in windows:
        assert len(window) <= model.max_length
        assert window[0] == cls_id and window[-1] == sep_id
    all_ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert long_windows[-1][1:-1] == all_ids[-(model.max_length - 2):], "the end of the text is read too"


def test_predictions_are_probabilities_best_first(model: TaggingModel) -> None:
    [detail] = model.predict_detailed(["정부, 내년도 예산안 국회 제출"], top_k=24)
    scores = [s for _, s in detail.tags]
    assert scores == sorted(scores, reverse=True)
    assert 0 < sum(scores) <= 1.0 + 1e-5
    assert detail.n_windows == 1
