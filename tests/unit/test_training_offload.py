"""Fine-tuning on another machine (offload.py): pack → tune → train --tuned-layers.

The bundle must carry what fine-tuning reads and nothing of the validation split; the tuned
layers must land in the artifact exactly as the tuning run left them (up to the delta file's
int8 step); a tuned file made from other data is refused."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from services.model_serving.models import delta
from services.model_serving.models.e5_base import build_encoder, read_base
from services.model_serving.models.hybrid import DELTA_FILE
from services.model_serving.models.int8_rows import read_safetensors
from services.model_serving.models.loader import load_model
from services.model_training import offload, train_hybrid
from services.model_training.config import TrainConfig
from services.model_training.train_hybrid import EncoderPlan, Split, train
from tests.unit.test_training import _small_data

CFG = TrainConfig(seed=13, max_windows=2, window_tokens=48, emb_scales=(3.0,))


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("offload")
    data = _small_data(root / "data", {"headlines": 10, "petitions": 5})
    description = offload.pack(data, root / "bundle", CFG)
    return data, root / "bundle", description


@pytest.fixture(scope="module")
def tuned(packed: tuple[Path, Path, dict]) -> tuple[Path, dict]:
    """Two candidates tuned once for the module: the file and its report."""
    tuned_file = packed[1].parent / "tuned.safetensors"
    report = offload.tune(packed[1], tuned_file, [{"tune_layers": 2, "epochs": 1, "learning_rate": 1e-3},
                                                  {"tune_layers": 1, "epochs": 1}])
    return tuned_file, report


def test_the_bundle_holds_the_fitting_and_selection_windows_only(packed: tuple[Path, Path, dict]) -> None:
    data, bundle_dir, description = packed
    split = Split.make(data, CFG)
    assert description["documents"] == {"fit": len(split.fit), "select": len(split.select)}
    bundle = offload.Bundle.read(bundle_dir)
    plan = EncoderPlan.make(CFG)
    windows, owners = plan.windows_for([split.train_items[i].text for i in split.fit], CFG.max_windows)
    packed_windows, packed_owners = bundle.windows("fit")
    assert packed_owners == owners and [len(w) for w in packed_windows] == [len(w) for w in windows]
    assert not any(k.startswith("val") for k in bundle.tensors)
    # The pruned vocabulary embeds every packed token exactly as the full base does.
    full = build_encoder(read_base()).embeddings.word_embeddings.weight
    small = bundle.encoder().embeddings.word_embeddings.weight
    flat_full = [t for w in windows for t in w]
    flat_small = [t for w in packed_windows for t in w]
    assert torch.equal(small[flat_small], full[flat_full])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_layers_tuned_elsewhere_become_the_artifacts_encoder(packed: tuple[Path, Path, dict],
                                                            tuned: tuple[Path, dict], tmp_path: Path) -> None:
    data = packed[0]
    tuned_file, report = tuned
    assert len(report["candidates"]) == 2 and report["chosen"] in [c["candidate"] for c in report["candidates"]]
    diffs = load_file(str(tuned_file))
    layers = {int(k.split(".")[2]) for k in diffs}
    assert layers == ({10, 11} if report["chosen"]["tune_layers"] == 2 else {11})
    assert any(float(v.abs().max()) > 0 for v in diffs.values()), "tuning changed the layers"

    manifest = train(data, tmp_path / "model", CFG, tuned_layers=tuned_file)
    assert manifest["training"]["tune_layers"] == report["chosen"]["tune_layers"]
    assert manifest["training"]["fine_tuned_elsewhere"]["chosen"] == report["chosen"]
    assert read_safetensors(tmp_path / "model" / DELTA_FILE)[1][delta.ENCODING_KEY] == delta.INT8_ROW_DIFF
    model = load_model(tmp_path / "model")
    served = model.pooled.encoder.state_dict()  # type: ignore[attr-defined]
    base = build_encoder(read_base()).state_dict()
    for name, diff in diffs.items():
        step = float(diff.to(torch.float32).abs().max()) / 127 + 1e-6
        assert torch.allclose(served[name], base[name] + diff.to(torch.float32), atol=step), name


def test_layers_tuned_on_other_data_are_refused(tuned: tuple[Path, dict], tmp_path: Path) -> None:
    other = _small_data(tmp_path / "other", {"headlines": 9, "petitions": 5})
    with pytest.raises(ValueError, match="other data"):
        train(other, tmp_path / "model", CFG, tuned_layers=tuned[0])


def test_layers_naming_a_frozen_layer_are_refused_before_the_lower_pass(  # type: ignore[no-untyped-def]
        packed: tuple[Path, Path, dict], tuned: tuple[Path, dict], tmp_path: Path, monkeypatch) -> None:
    tensors, metadata = read_safetensors(tuned[0])
    tensors["encoder.layer.0.output.dense.bias"] = torch.zeros(384, dtype=torch.float16)
    save_file(tensors, str(tmp_path / "tuned.safetensors"), metadata=metadata)

    def lower_pass_all(*args: object, **kwargs: object) -> None:
        raise AssertionError("the lower pass ran before the tuned layers were checked")

    monkeypatch.setattr(train_hybrid, "lower_pass_all", lower_pass_all)
    with pytest.raises(ValueError, match="no tuned layer"):
        train(packed[0], tmp_path / "model", CFG, tuned_layers=tmp_path / "tuned.safetensors")


def test_a_candidate_may_only_set_tuning_fields(packed: tuple[Path, Path, dict], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="may set"):
        offload.tune(packed[1], tmp_path / "t.safetensors", [{"window_tokens": 64}])
    with pytest.raises(ValueError, match="tune_layers must be"):
        offload.tune(packed[1], tmp_path / "t.safetensors", [{"tune_layers": 13}])


def test_int8_row_differences_round_trip_within_one_step() -> None:
    rng = np.random.default_rng(3)
    base = {"w": torch.from_numpy(rng.normal(size=(6, 8)).astype(np.float32)),
            "b": torch.zeros(8), "z": torch.ones(2, 3)}
    tuned = {"w": base["w"] + torch.from_numpy(rng.normal(scale=1e-3, size=(6, 8)).astype(np.float32)),
             "b": torch.full((8,), 0.5), "z": torch.ones(2, 3)}
    stored, metadata = delta.encode_int8_row_diff(tuned, base)
    assert stored["w"].dtype == torch.int8 and stored["b"].dtype == torch.float32
    values = delta.decode(stored, metadata, base)
    step = (tuned["w"] - base["w"]).abs().amax(dim=1, keepdim=True) / 127
    assert bool(((values["w"] - tuned["w"]).abs() <= step / 2 + 1e-7).all())
    assert torch.equal(values["b"], tuned["b"]) and torch.equal(values["z"], base["z"]), "no change stays exact"
    with pytest.raises(delta.DeltaFormatError, match="unknown delta encoding"):
        delta.decode(stored, {delta.ENCODING_KEY: "int4"}, base)
    with pytest.raises(delta.DeltaFormatError, match="unknown encoder parameters"):
        delta.decode({"x": torch.zeros(1)}, None, base)
