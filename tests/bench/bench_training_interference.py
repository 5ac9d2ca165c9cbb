"""Inference latency while a training run shares the host: quiet, then during a training run started
as the training worker starts it (child process, `nice` N, one torch thread), at nice 10 and at nice 0.

    python -m tests.bench.bench_training_interference [--requests 300] [--out var/bench/training.json]

Inference is the shipped model's forward pass in this process (load_model + probabilities, the
reference path model-serving's batcher reproduces), one headline per request, sequentially; the
training run is `services.model_training.job_run` on 600 headlines (2 tuned layers, 2 epochs) so
it is still fine-tuning while the requests are measured. On a shared machine every number moves with
what else runs: compare the phases of one run, and repeat.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from services.model_serving.models.base import probabilities
from services.model_serving.models.loader import load_model
from services.model_serving.settings import ModelServingSettings
from tests.conftest import DATA

REPO = Path(__file__).resolve().parents[2]


def headlines(n: int) -> list[dict[str, str]]:
    rows = []
    with (DATA / "headlines_train.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            rows.append(json.loads(line))
            if len(rows) == n:
                break
    return rows


def measure(model: object, texts: list[str]) -> dict[str, float]:
    times = []
    for text in texts:
        started = time.perf_counter()
        probabilities(model, [text])  # type: ignore[arg-type]
        times.append((time.perf_counter() - started) * 1000)
    arr = np.array(times)
    return {"n": len(times), "p50_ms": round(float(np.percentile(arr, 50)), 2),
            "p95_ms": round(float(np.percentile(arr, 95)), 2), "mean_ms": round(float(arr.mean()), 2)}


def start_training(work: Path, nice: int) -> subprocess.Popen[bytes]:
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "headlines_train.jsonl").write_text(
        "".join(json.dumps({"text": r["text"], "label": r["label"]}, ensure_ascii=False) + "\n"
                for r in headlines(600)), encoding="utf-8")
    spec = work / "spec.json"
    spec.write_text(json.dumps({"name": "bench", "seed": 1, "hyperparameters": {
        "epochs": 2, "tune_layers": 2, "max_windows": 1, "window_tokens": 64, "emb_scales": [3.0],
        "torch_threads": 1}}), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "services.model_training.job_run", "--data-dir", str(data),
                             "--out", str(work / "out"), "--spec", str(spec)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=lambda: os.nice(nice))


def during(model: object, texts: list[str], nice: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_training(Path(tmp), nice)
        assert proc.stdout is not None
        for raw in proc.stdout:   # wait until it computes (the lower pass), past loading the base model
            if b'"stage": "lower-pass"' in raw:
                break
        result = measure(model, texts)
        result["training_still_running"] = proc.poll() is None
        proc.kill()
        proc.wait()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "training.json")
    args = parser.parse_args()
    settings = ModelServingSettings()
    model = load_model(settings.model_dir, settings.inference_options())
    texts = [r["text"] for r in headlines(args.requests + 50)[50:]]
    measure(model, texts[:30])   # warm-up
    report = {"cpus": os.cpu_count(), "load_average_before": os.getloadavg(),
              "quiet": measure(model, texts),
              "training_nice_10": during(model, texts, 10),
              "training_nice_0": during(model, texts, 0),
              "quiet_after": measure(model, texts),
              "load_average_after": os.getloadavg()}
    for phase in ("training_nice_10", "training_nice_0"):
        report[f"{phase}_p95_ratio"] = round(report[phase]["p95_ms"] / report["quiet"]["p95_ms"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
