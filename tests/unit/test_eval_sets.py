"""The fixed evaluation sets: the training's own validation split, written reproducibly, read back by
model-serving with their version (SHA-256) and used by the gate's leakage check."""
from __future__ import annotations

from pathlib import Path

import pytest

from services.model_serving.datasets.eval_sets import load_eval_set
from services.model_training.config import TrainConfig
from services.model_training.eval_sets import write_eval_sets
from services.model_training.train_hybrid import Split
from tests.unit.test_training import _small_data


def test_eval_sets_are_the_validation_split_and_reproducible(tmp_path: Path) -> None:
    data = _small_data(tmp_path / "data", {"headlines": 20, "petitions": 6})
    first = write_eval_sets(data, tmp_path / "a", seed=13, val_fraction=0.1)
    again = write_eval_sets(data, tmp_path / "b", seed=13, val_fraction=0.1)
    assert first == again and (tmp_path / "a" / "headlines.jsonl").read_bytes() == (
        tmp_path / "b" / "headlines.jsonl").read_bytes()
    split = Split.make(data, TrainConfig(seed=13))
    loaded = load_eval_set(tmp_path / "a", "headlines")
    assert loaded is not None and loaded.sha256 == first["headlines"]["sha256"]
    assert loaded.texts == [x.text for x in split.by_dataset["headlines"]["val"]]
    assert set(loaded.texts).isdisjoint(x.text for x in split.train_items)
    assert load_eval_set(tmp_path / "a", "unknown") is None and load_eval_set(tmp_path / "a", "../x") is None


def test_make_up_writes_the_evaluation_sets_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from services.cli.main import OpsSettings, _ensure_eval_sets

    data = _small_data(tmp_path / "data", {"headlines": 20, "petitions": 6})
    monkeypatch.setenv("DATA_DIR", str(data))
    monkeypatch.setenv("DOCTAG_EVAL_SETS_DIR", str(tmp_path / "eval"))
    _ensure_eval_sets(OpsSettings(state_dir=tmp_path / "state"))
    assert "headlines" in capsys.readouterr().out
    first = (tmp_path / "eval" / "headlines.jsonl").read_bytes()
    _ensure_eval_sets(OpsSettings(state_dir=tmp_path / "state"))
    assert capsys.readouterr().out == "" and (tmp_path / "eval" / "headlines.jsonl").read_bytes() == first
