"""One training job's run, as the training worker starts it in a child process:

    python -m services.model_training.job_run --data-dir DIR --out DIR --spec spec.json

`DIR` holds `<task>_train.jsonl` files (the job's approved, masked dataset rows); `spec.json` is
{"name", "seed", "hyperparameters", "manifest": {...}} (the job id, dataset versions and code
version, copied into the artifact's manifest). Progress and logs go to stdout, one JSON object a
line: progress as {"event": "progress", "stage", ...} (fine-tuning adds "step", "steps", "epoch",
"epochs", "loss"), the rest are the JSON log lines, so the worker reports both without sharing
memory with the run. The artifact is
written to `--out` only when complete (train() renames it into place last).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from .config import TrainConfig

# The hyper-parameters a job may set (others keep TrainConfig's defaults).
TUNABLE = ("epochs", "tune_layers", "max_windows", "window_tokens", "learning_rate", "head_learning_rate",
           "batch_docs", "emb_scales", "svm_c", "min_df", "torch_threads")


def code_version() -> str:
    """SHA-256 (first 16 hex) of the training and model source files: the code that trains."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for folder in ("model_training", "model_serving/models"):
        for path in sorted((root / folder).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def config_from_spec(spec: dict[str, Any]) -> TrainConfig:
    values: dict[str, Any] = {k: v for k, v in (spec.get("hyperparameters") or {}).items() if k in TUNABLE}
    if "emb_scales" in values:
        values["emb_scales"] = tuple(float(x) for x in values["emb_scales"])
    return dataclasses.replace(TrainConfig(), name=str(spec["name"]), seed=int(spec["seed"]), **values)


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps({"event": "progress", **event}, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    from services.common.logging import configure_logging

    from .train_hybrid import train

    parser = argparse.ArgumentParser(description="one training job's run")
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--spec", required=True, type=Path)
    args = parser.parse_args(argv)
    configure_logging("training-run", "INFO")
    spec = json.loads(args.spec.read_text(encoding="utf-8"))
    cfg = config_from_spec(spec)
    extra = {"training_job": {**spec.get("manifest", {}), "code_version": code_version(), "seed": cfg.seed,
                              "hyperparameters": spec.get("hyperparameters") or {}}}
    emit({"stage": "loading"})
    manifest = train(args.data_dir, args.out, cfg, on_progress=emit, extra_manifest=extra)
    emit({"stage": "done", "metrics": manifest.get("metrics", {}).get("validation", {})})


if __name__ == "__main__":
    main()
