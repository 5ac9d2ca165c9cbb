"""Training settings and their command-line flags; light to import (no torch), so the CLI's
`doctag model train --help` and every other `doctag` command start fast."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

DATASETS = (("headlines", "headlines_train.jsonl"), ("petitions", "petitions_train.jsonl"))


@dataclass(frozen=True)
class TrainConfig:
    name: str = "doctag-tagger"
    seed: int = 13
    val_fraction: float = 0.1        # of each data set: held out, never seen by training or selection
    select_fraction: float = 0.1     # of the remaining training part: chooses the head's settings
    prefix: str = "query: "
    window_tokens: int = 256
    max_windows: int = 4
    pool_layers: tuple[int, ...] = (8, 12)
    tune_layers: int = 4           # top encoder layers fine-tuned; 0 = frozen encoder
    epochs: int = 3
    batch_docs: int = 32
    learning_rate: float = 1e-4
    head_learning_rate: float = 2e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    tune_windows_per_doc: int = 1  # windows of a long document seen per fine-tuning step (random, seeded)
    emb_scales: tuple[float, ...] = (2.0, 3.0, 4.0)  # candidate weights of the embedding block (chosen on selection)
    svm_c: float = 0.3
    min_df: int = 2
    quantize: bool = False         # dynamic int8 (off: its per-batch activation scale makes scores batch-dependent)
    torch_threads: int = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument("--data-dir", required=True, type=Path, help="folder with headlines_train.jsonl and "
                                                                     "petitions_train.jsonl")
    parser.add_argument("--out", required=True, type=Path, help="artifact directory to write (replaced)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--tune-layers", type=int, default=defaults.tune_layers)
    parser.add_argument("--max-windows", type=int, default=defaults.max_windows)
    parser.add_argument("--window-tokens", type=int, default=defaults.window_tokens)
    parser.add_argument("--quantize", action="store_true", help="int8 embeddings (serve with DOCTAG_QUANTIZE=true)")
    parser.add_argument("--threads", type=int, default=defaults.torch_threads)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep the lower encoder pass here and reuse it when nothing it depends on changed")
    parser.add_argument("--tuned-layers", type=Path, default=None,
                        help="encoder layers fine-tuned on another machine (`python -m "
                             "services.model_training.offload tune`): used instead of fine-tuning here")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(seed=args.seed, epochs=args.epochs, tune_layers=args.tune_layers,
                       max_windows=args.max_windows, window_tokens=args.window_tokens, quantize=args.quantize,
                       torch_threads=args.threads)
