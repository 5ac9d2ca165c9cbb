"""Writes the fixed evaluation set of each task (`<out>/<task>.jsonl`) from the training data:

    python -m services.model_training.eval_sets --data-dir ../shared/data --out var/eval-sets [--seed 13]

Each set is the training's own seeded, stratified validation split of that task (the split the
shipped model's validation numbers come from, which no training or selection step reads), so
model-serving's evaluations of trained versions and the quality gate's leakage check use texts
the default model never trained on. A set's version is its file's SHA-256 (printed, and named
in every evaluation and gate report); the same data and seed always write the same bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from .config import TrainConfig
from .train_hybrid import load_split


def write_eval_sets(data_dir: Path, out: Path, seed: int, val_fraction: float) -> dict[str, dict[str, object]]:
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, dict[str, object]] = {}
    for task, parts in load_split(data_dir, val_fraction, seed).items():
        body = "".join(json.dumps({"text": x.text, "label": x.label}, ensure_ascii=False) + "\n"
                       for x in parts["val"]).encode("utf-8")
        tmp = out / f".{task}.jsonl.tmp"
        tmp.write_bytes(body)
        tmp.replace(out / f"{task}.jsonl")
        written[task] = {"rows": len(parts["val"]), "sha256": hashlib.sha256(body).hexdigest()}
    return written


def main(argv: list[str] | None = None) -> None:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    print(json.dumps(write_eval_sets(args.data_dir, args.out, args.seed, defaults.val_fraction), indent=2))


if __name__ == "__main__":
    main()
