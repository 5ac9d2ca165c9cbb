"""Inference with the tagging model: windows over long texts, batched forward passes, mean aggregation.

This is the only inference code path: the service calls it, and training computes its
validation metrics by loading the saved artifact through it.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from .manifest import ModelIntegrityError, read_verified_manifest
from .metrics import INFERENCE_BATCH_WINDOWS, INFERENCE_LATENCY, INFERENCE_WINDOWS_PER_TEXT
from .windowing import aggregate, split_windows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceOptions:
    """How texts are cut and batched; the defaults are the service's defaults."""

    max_windows: int = 16      # windows per document at most, spread over the whole text
    overlap: int = 32          # tokens shared by consecutive windows
    batch_size: int = 16       # windows per forward pass
    min_score: float = 0.05    # tags below this are dropped, except the best one


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


class TaggingModel:
    """A verified, loaded tagging model. Not thread-safe: use it from one thread."""

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
        self.max_length: int = int(model.config.max_position_embeddings)

    @classmethod
    def load(cls, directory: Path | str, *, options: InferenceOptions | None = None,
             torch_threads: int | None = None) -> TaggingModel:
        """Checks every file against the manifest, then loads tokenizer and model for CPU inference."""
        directory = Path(directory).resolve()
        manifest, manifest_sha256 = read_verified_manifest(directory)
        if torch_threads is not None:
            torch.set_num_threads(max(1, torch_threads))
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(directory, local_files_only=True)
        model.eval()
        instance = cls(directory, manifest, manifest_sha256, tokenizer, model, options or InferenceOptions())
        if list(manifest["labels"]) != instance.labels:
            raise ModelIntegrityError("manifest.json labels differ from config.json id2label order")
        log.info("model loaded", extra={"model": instance.name, "version": instance.version,
                                        "labels": len(instance.labels), "torch_threads": torch.get_num_threads()})
        return instance

    def windows(self, text: str) -> list[list[int]]:
        """The windows (input ids with special tokens) the model reads for `text`."""
        windows, _, _ = encode_windows(self.tokenizer, [text], max_length=self.max_length,
                                       overlap=self.options.overlap, max_windows=self.options.max_windows)
        return windows

    def probabilities(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int], list[int]]:
        """(n_texts, n_labels) label probabilities, window count per text, token count per text."""
        if not texts:
            return np.zeros((0, len(self.labels))), [], []
        windows, owners, n_tokens = encode_windows(
            self.tokenizer, texts, max_length=self.max_length, overlap=self.options.overlap,
            max_windows=self.options.max_windows)
        # Batching windows of similar length wastes the least work on padding.
        order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
        window_probs = np.zeros((len(windows), len(self.labels)), dtype=np.float32)
        pad_id = self.tokenizer.pad_token_id
        started = time.perf_counter()
        with torch.inference_mode():
            for begin in range(0, len(order), self.options.batch_size):
                batch = order[begin:begin + self.options.batch_size]
                ids, mask = pad_batch([windows[i] for i in batch], pad_id)
                logits = self.model(input_ids=ids, attention_mask=mask).logits
                window_probs[batch] = torch.softmax(logits.float(), dim=-1).numpy()
                INFERENCE_BATCH_WINDOWS.observe(len(batch))
        INFERENCE_LATENCY.observe(time.perf_counter() - started)
        counts = np.bincount(np.asarray(owners), minlength=len(texts)).tolist()
        for count in counts:
            INFERENCE_WINDOWS_PER_TEXT.observe(count)
        return aggregate(window_probs, owners, len(texts)), counts, n_tokens

    def predict_detailed(self, texts: Sequence[str], top_k: int = 3) -> list[DocumentPrediction]:
        probs, counts, n_tokens = self.probabilities(texts)
        return [
            DocumentPrediction(top_tags(p, self.labels, top_k, self.options.min_score), tokens, count)
            for p, count, tokens in zip(probs, counts, n_tokens, strict=True)
        ]

    def predict(self, texts: Sequence[str], top_k: int = 3) -> list[list[tuple[str, float]]]:
        """Per text, the `top_k` most likely tags with their probability, best first."""
        return [p.tags for p in self.predict_detailed(texts, top_k)]
