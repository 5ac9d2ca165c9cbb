"""The window-model stages every tagging model implements, and the reference inference path.

Every model type implements the three stages of `WindowModel` (prepare -> forward -> finish)
so that the dynamic batcher (../batcher.py) can put windows of many concurrent requests into
one forward pass. `probabilities()` is the reference, unbatched path over the same stages;
the service, `doctag model eval` and training's validation all reach the model through them.
One module per architecture implements the stages (bert.py, hybrid.py); loader.py maps the
manifest's `architecture` to its class.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch


@dataclass(frozen=True)
class InferenceOptions:
    """How texts are cut, batched and computed; the defaults are the service's defaults."""

    max_windows: int = 16      # windows per document at most, spread over the whole text
    overlap: int = 32          # tokens shared by consecutive windows
    window_tokens: int = 0     # window length with special tokens; 0 = the model's maximum
    quantize: bool = False     # dynamic int8 quantisation of nn.Linear: faster, but batch-dependent (batcher.py)
    onnx: bool = False         # e5-hybrid: run the encoder with ONNX Runtime (see onnx_encoder.py)
    onnx_cache_dir: Path | None = None   # where exported encoders are kept (None: export in memory)
    threads: int = 1           # intra-op threads of one ONNX Runtime forward pass


@dataclass(frozen=True)
class PreparedText:
    """One text, tokenised and cut into the windows the model reads."""

    windows: list[list[int]]   # model input ids of each window, special tokens included
    n_tokens: int              # content tokens of the whole text
    extra: Any = None          # model-specific per-text data; opaque to the batcher


@runtime_checkable
class WindowModel(Protocol):
    name: str
    version: str
    labels: list[str]
    manifest: dict[str, Any]
    manifest_sha256: str
    directory: Path
    pad_id: int

    def prepare(self, texts: Sequence[str]) -> list[PreparedText]:
        """Tokenise and plan windows (cheap, pure CPU, thread-safe)."""

    def forward(self, windows: Sequence[Sequence[int]]) -> np.ndarray:
        """(len(windows), D) float32 outputs per window; independent of the other windows in the call."""

    def finish(self, prepared: PreparedText, outputs: np.ndarray) -> np.ndarray:
        """(n_labels,) probabilities of one text from the forward rows of its windows, in order."""


@dataclass(frozen=True)
class DocumentPrediction:
    tags: list[tuple[str, float]]   # best first
    n_tokens: int                   # content tokens of the whole text
    n_windows: int                  # windows the model actually read


def pad_batch(windows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) for windows of different lengths, right-padded."""
    width = max(len(w) for w in windows)
    ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), width), dtype=torch.long)
    for row, window in enumerate(windows):
        ids[row, :len(window)] = torch.tensor(window, dtype=torch.long)
        mask[row, :len(window)] = 1
    return ids, mask


def top_tags(probs: np.ndarray, labels: Sequence[str], top_k: int, min_score: float) -> list[tuple[str, float]]:
    """The `top_k` best labels with their probability; below `min_score` only the best one stays."""
    order = np.argsort(-probs, kind="stable")[:max(1, top_k)]
    result: list[tuple[str, float]] = []
    for rank, idx in enumerate(order):
        score = float(probs[idx])
        if rank > 0 and score < min_score:
            break
        result.append((labels[idx], score))
    return result


def quantize_linear(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantisation of every nn.Linear (weights int8, activations quantised per call)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notice pointing at torchao
        # torch leaves quantize_dynamic unannotated
        quantized: torch.nn.Module = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            model, {torch.nn.Linear}, dtype=torch.qint8)
        return quantized


def probabilities(model: WindowModel, texts: Sequence[str], batch_max_windows: int = 16) -> np.ndarray:
    """(n_texts, n_labels) label probabilities: the reference, unbatched path.

    Windows are forwarded in length-sorted chunks of `batch_max_windows`, so short windows are
    not padded to long ones. The batcher must give the same numbers (allclose, atol 1e-5).
    """
    prepared = model.prepare(texts)
    return _probabilities(model, prepared, batch_max_windows)


def _probabilities(model: WindowModel, prepared: Sequence[PreparedText], batch_max_windows: int) -> np.ndarray:
    if not prepared:
        return np.zeros((0, len(model.labels)))
    windows = [w for p in prepared for w in p.windows]
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
    outputs: np.ndarray | None = None
    for begin in range(0, len(order), batch_max_windows):
        chunk = order[begin:begin + batch_max_windows]
        rows = model.forward([windows[i] for i in chunk])
        if outputs is None:
            outputs = np.zeros((len(windows), rows.shape[1]), dtype=np.float32)
        outputs[chunk] = rows
    assert outputs is not None
    result = []
    offset = 0
    for p in prepared:
        result.append(model.finish(p, outputs[offset:offset + len(p.windows)]))
        offset += len(p.windows)
    return np.stack(result)


def predict_detailed(model: WindowModel, texts: Sequence[str], top_k: int = 3,
                     min_score: float = 0.05, batch_max_windows: int = 16) -> list[DocumentPrediction]:
    """Tags per text with the token and window counts, over the reference path."""
    prepared = model.prepare(texts)
    probs = _probabilities(model, prepared, batch_max_windows)
    return [DocumentPrediction(top_tags(p, model.labels, top_k, min_score), prep.n_tokens, len(prep.windows))
            for p, prep in zip(probs, prepared, strict=True)]

