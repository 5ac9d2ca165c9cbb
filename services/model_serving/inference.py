"""Inference with the tagging model: windows over long texts, forward passes, per-text aggregation.

Every model type implements the three stages of `WindowModel` (prepare -> forward -> finish)
so that the dynamic batcher (batcher.py) can put windows of many concurrent requests into one
forward pass. `probabilities()` is the reference, unbatched path over the same stages; the
service, `doctag model eval` and training's validation all reach the model through them.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from .manifest import ModelIntegrityError, read_verified_manifest
from .windowing import split_windows

log = logging.getLogger(__name__)

BERT_ARCHITECTURE = "bert-sequence-classification"
HYBRID_ARCHITECTURE = "e5-hybrid"


@dataclass(frozen=True)
class InferenceOptions:
    """How texts are cut, batched and computed; the defaults are the service's defaults."""

    max_windows: int = 16      # windows per document at most, spread over the whole text
    overlap: int = 32          # tokens shared by consecutive windows
    batch_size: int = 16       # windows per forward pass on the unbatched reference path
    min_score: float = 0.05    # tags below this are dropped, except the best one
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


def encode_windows(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    max_length: int,
    overlap: int,
    max_windows: int,
) -> tuple[list[list[int]], list[int], list[int]]:
    """Model inputs for every window of every text.

    Returns (window input ids with [CLS]/[SEP], owner text index per window, content
    token count per text). The whole text is tokenized; nothing is truncated silently.
    """
    encoded = tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False,
                        return_attention_mask=False)["input_ids"]
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    windows: list[list[int]] = []
    owners: list[int] = []
    for index, ids in enumerate(encoded):
        for chunk in split_windows(ids, max_length - 2, overlap, max_windows):
            windows.append([cls_id, *chunk, sep_id])
            owners.append(index)
    return windows, owners, [len(ids) for ids in encoded]


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
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notice pointing at torchao
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


class BertWindowModel:
    """A verified `BertForSequenceClassification` artifact ("bert-sequence-classification").

    forward = softmax probabilities per window; finish = mean over the text's windows.
    `forward` may be called from several threads at once (no state is mutated).
    """

    def __init__(self, directory: Path, manifest: dict[str, Any], manifest_sha256: str,
                 tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module, options: InferenceOptions) -> None:
        self.directory = directory
        self.manifest = manifest
        self.manifest_sha256 = manifest_sha256
        self.tokenizer = tokenizer
        self.model = model
        self.options = options
        self.name: str = str(manifest["name"])
        self.version: str = str(manifest["version"])
        self.labels: list[str] = [model.config.id2label[i] for i in range(model.config.num_labels)]
        model_max = int(model.config.max_position_embeddings)
        # A window shorter than the model's maximum is cheaper (attention is quadratic) but sees less context.
        self.max_length: int = min(options.window_tokens, model_max) if options.window_tokens > 0 else model_max
        if self.max_length - 2 <= options.overlap:
            raise ValueError(f"window_tokens {self.max_length} leaves no room beside an overlap of {options.overlap}")
        self.pad_id: int = int(tokenizer.pad_token_id or 0)

    @classmethod
    def from_verified(cls, directory: Path, manifest: dict[str, Any], manifest_sha256: str,
                      options: InferenceOptions) -> BertWindowModel:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(
            directory, local_files_only=True, dtype=torch.float32)
        model.eval()
        instance = cls(directory, manifest, manifest_sha256, tokenizer,
                       quantize_linear(model) if options.quantize else model, options)
        if list(manifest["labels"]) != instance.labels:
            raise ModelIntegrityError("manifest.json labels differ from config.json id2label order")
        log.info("model loaded", extra={"model": instance.name, "version": instance.version,
                                        "labels": len(instance.labels), "quantized": options.quantize,
                                        "window_tokens": instance.max_length})
        return instance

    # -- the WindowModel stages --------------------------------------------------------------
    def prepare(self, texts: Sequence[str]) -> list[PreparedText]:
        windows, owners, n_tokens = encode_windows(
            self.tokenizer, texts, max_length=self.max_length, overlap=self.options.overlap,
            max_windows=self.options.max_windows)
        per_text: list[list[list[int]]] = [[] for _ in texts]
        for window, owner in zip(windows, owners, strict=True):
            per_text[owner].append(window)
        return [PreparedText(w, n) for w, n in zip(per_text, n_tokens, strict=True)]

    def forward(self, windows: Sequence[Sequence[int]]) -> np.ndarray:
        ids, mask = pad_batch(windows, self.pad_id)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask).logits
            return torch.softmax(logits.float(), dim=-1).numpy()

    def finish(self, prepared: PreparedText, outputs: np.ndarray) -> np.ndarray:
        if outputs.shape[0] != len(prepared.windows) or outputs.shape[0] == 0:
            raise ValueError("one output row per window is needed")
        return outputs.astype(np.float64).mean(axis=0)



def load_model(directory: Path | str, options: InferenceOptions | None = None) -> WindowModel:
    """Verifies the artifact against its manifest, then loads it with the class of its architecture."""
    directory = Path(directory).resolve()
    options = options or InferenceOptions()
    manifest, manifest_sha256 = read_verified_manifest(directory)
    architecture = str(manifest.get("architecture", BERT_ARCHITECTURE))
    if architecture == HYBRID_ARCHITECTURE:
        from .hybrid import HybridModel  # the lead's module; imported only when such an artifact is served

        return HybridModel.load(directory, manifest, manifest_sha256, options)
    # The first artifact describes its architecture in words ("BertForSequenceClassification, trained ...").
    if architecture == BERT_ARCHITECTURE or architecture.startswith("BertForSequenceClassification"):
        return BertWindowModel.from_verified(directory, manifest, manifest_sha256, options)
    raise ModelIntegrityError(f"manifest.json: unknown architecture {architecture!r}")


def probabilities(model: WindowModel, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
    """(n_texts, n_labels) label probabilities: the reference, unbatched path.

    Windows are forwarded in length-sorted chunks of `batch_size`, so short windows are
    not padded to long ones. The batcher must give the same numbers (allclose, atol 1e-5).
    """
    prepared = model.prepare(texts)
    return _probabilities(model, prepared, batch_size)


def _probabilities(model: WindowModel, prepared: Sequence[PreparedText], batch_size: int) -> np.ndarray:
    if not prepared:
        return np.zeros((0, len(model.labels)))
    windows = [w for p in prepared for w in p.windows]
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
    outputs: np.ndarray | None = None
    for begin in range(0, len(order), batch_size):
        chunk = order[begin:begin + batch_size]
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
                     min_score: float = 0.05, batch_size: int = 16) -> list[DocumentPrediction]:
    """Tags per text with the token and window counts, over the reference path."""
    prepared = model.prepare(texts)
    probs = _probabilities(model, prepared, batch_size)
    return [DocumentPrediction(top_tags(p, model.labels, top_k, min_score), prep.n_tokens, len(prep.windows))
            for p, prep in zip(probs, prepared, strict=True)]

