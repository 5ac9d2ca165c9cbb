"""The training worker's own checks: an artifact is handed over only when every file matches its
manifest, and a run's progress gives an estimate of the time left."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from services.training_worker.run import TrainingRun
from services.training_worker.worker import ArtifactInvalid, verify_artifact


def _artifact(directory: Path) -> Path:
    directory.mkdir()
    (directory / "head.safetensors").write_bytes(b"weights")
    (directory / "lexical.json").write_text("{}", encoding="utf-8")
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}
    (directory / "manifest.json").write_text(json.dumps({"name": "m", "files": files}), encoding="utf-8")
    return directory


def test_a_complete_artifact_passes_and_a_changed_missing_or_extra_file_does_not(tmp_path: Path) -> None:
    good = _artifact(tmp_path / "a")
    assert verify_artifact(good)["name"] == "m"
    (good / "head.safetensors").write_bytes(b"weightz")
    with pytest.raises(ArtifactInvalid, match=r"head\.safetensors does not match"):
        verify_artifact(good)
    missing = _artifact(tmp_path / "b")
    (missing / "lexical.json").unlink()
    with pytest.raises(ArtifactInvalid, match="differ"):
        verify_artifact(missing)
    extra = _artifact(tmp_path / "c")
    (extra / "stray.bin").write_bytes(b"x")
    with pytest.raises(ArtifactInvalid, match=r"stray\.bin"):
        verify_artifact(extra)


def test_progress_estimates_the_time_left_from_the_fine_tuning_pace(tmp_path: Path) -> None:
    run = TrainingRun("m", tmp_path, tmp_path, tmp_path / "spec.json", nice=10, threads=1)
    run._progress({"event": "progress", "stage": "fine-tuning"})
    assert "eta_s" not in run.progress
    run._tune_started = run._tune_started - 10 if run._tune_started else None
    run._progress({"event": "progress", "stage": "fine-tuning", "step": 5, "steps": 20, "epoch": 1, "loss": 1.2})
    assert run.progress["step"] == 5 and 29 <= run.progress["eta_s"] <= 31
    assert run.snapshot()["stage"] == "fine-tuning" and run.snapshot()["pid"] is None
