"""Training: the data splits, and one small end-to-end run through the real pipeline.

The head's settings and the softmax temperature are chosen on a selection split cut from the
training part; the validation split, whose numbers the manifest reports, is read by nothing
but the final measurement."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from services.model_serving.models.loader import load_model
from services.model_training.config import TrainConfig
from services.model_training.train_hybrid import Split, WindowCache, stratified_indices, train
from tests.conftest import DATA


def _small_data(directory: Path, per_label: dict[str, int]) -> Path:
    """A few records of each label of both training files (petition bodies cut short)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, count in per_label.items():
        seen: Counter[str] = Counter()
        lines = []
        with (DATA / f"{name}_train.jsonl").open(encoding="utf-8") as fh:
            for line in fh:
                record = json.loads(line)
                if seen[record["label"]] < count:
                    seen[record["label"]] += 1
                    record["text"] = record["text"][:300]
                    lines.append(json.dumps(record, ensure_ascii=False))
        (directory / f"{name}_train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def test_stratified_indices_take_a_share_of_every_label_and_leave_singletons() -> None:
    labels = ["a"] * 20 + ["b"] * 10 + ["c"]
    picked = stratified_indices(labels, 0.1, seed=1)
    assert Counter(labels[i] for i in picked) == {"a": 2, "b": 1}
    assert picked == stratified_indices(labels, 0.1, seed=1), "seeded"


def test_selection_validation_and_fitting_parts_are_disjoint(tmp_path: Path) -> None:
    data = _small_data(tmp_path / "data", {"headlines": 30, "petitions": 12})
    split = Split.make(data, TrainConfig(seed=13))
    assert set(split.fit).isdisjoint(split.select)
    assert sorted(split.fit + split.select) == list(range(len(split.train_items)))
    val_texts = {x.text for d in split.by_dataset.values() for x in d["val"]}
    assert val_texts.isdisjoint(x.text for x in split.train_items), "validation never reaches training or selection"
    for name in ("headlines", "petitions"):
        assert any(split.dataset_of[i] == name for i in split.select), f"{name} is in the selection split"


def test_window_cache_subset_keeps_each_documents_windows_in_order() -> None:
    states = [torch.full((2, 384), float(i)) for i in range(5)]
    cache = WindowCache(states, np.arange(5, dtype=np.float32)[:, None], np.array([0, 0, 1, 2, 2]))
    sub = cache.subset([2, 0])
    assert [float(s[0, 0]) for s in sub.states] == [3.0, 4.0, 0.0, 1.0]
    assert sub.owner.tolist() == [0, 0, 1, 1]
    assert sub.frozen_pooled[:, 0].tolist() == [3.0, 4.0, 0.0, 1.0]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_small_training_run_writes_a_loadable_model_measured_on_the_untouched_split(tmp_path: Path) -> None:
    data = _small_data(tmp_path / "data", {"headlines": 12, "petitions": 6})
    cfg = TrainConfig(seed=13, epochs=1, tune_layers=1, max_windows=1, window_tokens=48, emb_scales=(3.0,))
    manifest = train(data, tmp_path / "model", cfg)
    for name, counts in manifest["training_data"].items():
        lines = (data / counts["file"]).read_text(encoding="utf-8").splitlines()
        assert counts["train"] + counts["selection"] + counts["validation"] == len(lines), name
        assert counts["selection"] > 0
    selection = manifest["metrics"]["head_selection"]
    assert selection["chosen"]["emb_scale"] == 3.0 and len(selection["candidates"]) == 2
    model = load_model(tmp_path / "model")
    assert model.labels == manifest["labels"] and len(model.labels) == 24
