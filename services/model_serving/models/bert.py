"""The "bert-sequence-classification" architecture: a fine-tuned `BertForSequenceClassification`.

forward = softmax probabilities per window; finish = the mean over the text's windows.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from .base import InferenceOptions, PreparedText, pad_batch, quantize_linear
from .manifest import ModelIntegrityError
from .windowing import split_windows

log = logging.getLogger(__name__)

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



class BertWindowModel:
    """A verified `BertForSequenceClassification` artifact.

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
        config: Any = model.config  # a transformers config; nn.Module.__getattr__ types it Tensor | Module
        self.labels: list[str] = [config.id2label[i] for i in range(config.num_labels)]
        model_max = int(config.max_position_embeddings)
        # A window shorter than the model's maximum is cheaper (attention is quadratic) but sees less context.
        self.max_length: int = min(options.window_tokens, model_max) if options.window_tokens > 0 else model_max
        if self.max_length - 2 <= options.overlap:
            raise ValueError(f"window_tokens {self.max_length} leaves no room beside an overlap of {options.overlap}")
        self.pad_id: int = int(tokenizer.pad_token_id or 0)

    @classmethod
    def load(cls, directory: Path, manifest: dict[str, Any], manifest_sha256: str,
                      options: InferenceOptions) -> BertWindowModel:
        # transformers leaves AutoTokenizer.from_pretrained unannotated
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)  # type: ignore[no-untyped-call]
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
        mean: np.ndarray = outputs.astype(np.float64).mean(axis=0)
        return mean
MODEL_CLASS = BertWindowModel
