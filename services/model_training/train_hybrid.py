"""Training of the default "e5-hybrid" tagging model (`make train`, `doctag model train`).

    python -m services.model_training.train_hybrid --data-dir ../shared/data \
        --out services/model_serving/artifacts/doctag-tagger [--seed 13]

1. Data: headlines and petitions (`evaluation.document_text`: a petition's title and body);
   a seeded, stratified 10 % of each data set is held out for validation and touched only to
   report the final numbers; a further stratified 10 % of the rest is the selection split,
   on which the head's settings and the softmax temperature are chosen.
2. Lower encoder pass: every text is cut into windows exactly as serving cuts them
   (hybrid.make_windows: "query: " + up to `window_tokens`, at most `max_windows` spread
   over the text) and run once through the frozen lower layers of multilingual-e5-small;
   their hidden states are kept (fp16) so that the next stage never runs them again.
3. Fine-tuning of the top `tune_layers` layers: on the kept states of the fitting part, with a linear head over
   the document embedding (the mean of the windows' pooled vectors, as serving computes it),
   class-balanced cross-entropy, AdamW, linear warm-up/decay (or done on another machine:
   offload.py, `--tuned-layers`). Only these layers change, so the artifact ships them alone
   (`encoder_delta.safetensors`, int8 differences from the base, models/delta.py) and the
   rest comes from the base file at load.
4. Document embeddings with the tuned top layers (dynamic int8 when serving quantises, so
   training sees the numbers serving will compute).
5. The final head: one scikit-learn LinearSVC over [TF-IDF of character 1-3-grams and word
   1-2-grams | scale × embedding]. The embedding scale and class balancing are chosen on the
   selection split (fitted on the rest), and so is the softmax temperature (by log-loss);
   the chosen head is then refitted on all training data (fitting part + selection split).
6. The artifact is written, loaded back through `models.loader.load_model` and measured with
   `evaluation.evaluate` — the serving inference path — on each untouched validation split;
   the numbers, with each branch alone, go into the manifest.

Reproducible: fixed seeds for the split, the initialisation and the data order; single-
threaded-deterministic CPU kernels; liblinear seeded.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import platform
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import BertModel

from services.model_serving.models import delta, int8_rows
from services.model_serving.models.base import (
    InferenceOptions,
    pad_batch,
    quantize_linear,
)
from services.model_serving.models.e5_base import (
    BASE_FILE,
    BASE_PACKAGE,
    BASE_SHA256,
    E5Base,
    E5Tokenizer,
    build_encoder,
    find_base_file,
    read_base,
)
from services.model_serving.models.hybrid import (
    ARCHITECTURE,
    DELTA_FILE,
    HEAD_FILE,
    HIDDEN,
    LEXICAL_FILE,
    HybridConfig,
    head_metadata,
    make_windows,
)
from services.model_serving.models.loader import load_model
from services.model_serving.models.manifest import sha256_file, write_manifest

from .config import DATASETS, TrainConfig, add_arguments, config_from_args
from .evaluation import LabelledText, classification_report, evaluate, read_labelled

log = logging.getLogger("services.model_training.train")

# Document vectors are unit-norm per block; a fixed gain lets the fine-tuning head reach
# confident logits early instead of first having to learn its own scale.
HEAD_INPUT_SCALE = 10.0


# --------------------------------------------------------------------------------------- data
def load_split(data_dir: Path, val_fraction: float, seed: int) -> dict[str, dict[str, list[LabelledText]]]:
    """{dataset: {"train": [...], "val": [...]}}, stratified per label with a seeded shuffle
    (a label with a single example stays in training)."""
    result: dict[str, dict[str, list[LabelledText]]] = {}
    for name, filename in datasets_in(data_dir):
        by_label: dict[str, list[LabelledText]] = defaultdict(list)
        for item in read_labelled(data_dir / filename):
            by_label[item.label].append(item)
        rng = random.Random(seed)
        train, val = [], []
        for label in sorted(by_label):
            group = list(by_label[label])
            rng.shuffle(group)
            n_val = max(1, round(len(group) * val_fraction)) if len(group) > 1 else 0
            val.extend(group[:n_val])
            train.extend(group[n_val:])
        result[name] = {"train": train, "val": val}
    return result


def datasets_in(data_dir: Path) -> tuple[tuple[str, str], ...]:
    """(name, file) of every `<name>_train.jsonl` in `data_dir`: the two of ../shared/data, or the
    tasks of a training job's dataset versions."""
    suffix = "_train.jsonl"
    return tuple((p.name[:-len(suffix)], p.name) for p in sorted(data_dir.glob(f"*{suffix}")))


def stratified_indices(labels: Sequence[str], fraction: float, seed: int) -> list[int]:
    """A seeded, stratified `fraction` of the positions of `labels` (a label seen once stays out)."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_label[label].append(index)
    rng = random.Random(seed)
    picked: list[int] = []
    for label in sorted(by_label):
        group = list(by_label[label])
        rng.shuffle(group)
        picked.extend(group[:max(1, round(len(group) * fraction))] if len(group) > 1 else [])
    return sorted(picked)


@dataclass(frozen=True)
class Split:
    """Per data set: `train` (fitting part + selection split) and the untouched `val`; `select`
    and `fit` are positions in the concatenated training list `train_items`."""

    by_dataset: dict[str, dict[str, list[LabelledText]]]
    train_items: list[LabelledText]
    select: list[int]
    fit: list[int]
    dataset_of: list[str]          # data set of each training item

    @classmethod
    def make(cls, data_dir: Path, cfg: TrainConfig) -> Split:
        by_dataset = load_split(data_dir, cfg.val_fraction, cfg.seed)
        train_items = [x for d in by_dataset.values() for x in d["train"]]
        dataset_of = [name for name, d in by_dataset.items() for _ in d["train"]]
        # Stratified by data set and label, so both data sets are in the selection split.
        select = stratified_indices([f"{d}/{x.label}" for d, x in zip(dataset_of, train_items, strict=True)],
                                    cfg.select_fraction, cfg.seed + 1)
        chosen = set(select)
        return cls(by_dataset, train_items, select, [i for i in range(len(train_items)) if i not in chosen],
                   dataset_of)


# ------------------------------------------------------------------------------- encoder parts
def extended_mask(mask: torch.Tensor) -> torch.Tensor:
    """The additive [B, 1, 1, L] attention mask BertLayer takes."""
    return (1.0 - mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(states.dtype)
    return (states * m).sum(dim=1) / m.sum(dim=1)


@dataclass
class WindowCache:
    """Per window: the frozen layers' output (fp16 [len, 384]) and the pooled vectors of the
    frozen pool layers; `owner` is the document index of each window (ascending)."""

    states: list[torch.Tensor]
    frozen_pooled: np.ndarray
    owner: np.ndarray

    def subset(self, docs: Sequence[int]) -> WindowCache:
        """The windows of the documents `docs`, renumbered 0..len(docs)-1 in that order."""
        new_index = {d: i for i, d in enumerate(docs)}
        keep = [w for w, d in enumerate(self.owner) if int(d) in new_index]
        keep.sort(key=lambda w: (new_index[int(self.owner[w])], w))
        return WindowCache([self.states[w] for w in keep], self.frozen_pooled[keep],
                           np.asarray([new_index[int(self.owner[w])] for w in keep], dtype=np.int64))


def lower_pass(encoder: BertModel, windows: list[list[int]], owners: list[int], lower: int,
               frozen_pool: tuple[int, ...], pad_id: int, batch: int = 32, label: str = "") -> WindowCache:
    """Runs the first `lower` layers once over every window."""
    layers_needed = max([lower, *frozen_pool]) if frozen_pool else lower
    states: list[torch.Tensor | None] = [None] * len(windows)
    pooled = np.zeros((len(windows), HIDDEN * len(frozen_pool)), dtype=np.float32)
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
    device = encoder.embeddings.word_embeddings.weight.device
    started = time.monotonic()
    with torch.inference_mode():
        for n, begin in enumerate(range(0, len(order), batch)):
            chunk = order[begin:begin + batch]
            ids, mask = (t.to(device) for t in pad_batch([windows[i] for i in chunk], pad_id))
            hidden = encoder.embeddings(input_ids=ids)
            ext = extended_mask(mask)
            outputs = {0: hidden}
            for layer_index in range(layers_needed):
                hidden = encoder.encoder.layer[layer_index](hidden, attention_mask=ext)[0]
                outputs[layer_index + 1] = hidden
            for j, layer in enumerate(frozen_pool):
                pooled[chunk, j * HIDDEN:(j + 1) * HIDDEN] = masked_mean(outputs[layer], mask).cpu().numpy()
            kept = outputs[lower].to(torch.float16).cpu()
            for row, i in enumerate(chunk):
                states[i] = kept[row, :len(windows[i])].clone()
            if n % 100 == 0:
                log.info("lower pass", extra={"part": label, "windows": f"{begin}/{len(windows)}",
                                              "seconds": round(time.monotonic() - started)})
    return WindowCache([s for s in states if s is not None], pooled, np.asarray(owners))


class TopEncoder(torch.nn.Module):
    """The tuned top layers applied to cached lower states; returns the pooled vectors of the
    pool layers that lie among them (absolute layer numbers `pool_layers`, the first tuned layer
    being number `first + 1`), one HIDDEN-wide block each, on the layers' device."""

    def __init__(self, layers: torch.nn.ModuleList, first: int, pool_layers: Sequence[int]) -> None:
        super().__init__()
        self.layers = layers
        self.first = first
        self.pool_layers = tuple(pool_layers)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device if len(self.layers) else torch.device("cpu")

    def forward(self, states: list[torch.Tensor]) -> torch.Tensor:
        if not self.pool_layers:
            return torch.zeros((len(states), 0), device=self.device)
        width = max(s.shape[0] for s in states)
        hidden = torch.zeros((len(states), width, HIDDEN), dtype=torch.float32)
        mask = torch.zeros((len(states), width), dtype=torch.long)
        for row, s in enumerate(states):
            hidden[row, :s.shape[0]] = s.to(torch.float32)
            mask[row, :s.shape[0]] = 1
        hidden, mask = hidden.to(self.device), mask.to(self.device)
        ext = extended_mask(mask)
        pooled = []
        for number, layer in enumerate(self.layers, start=self.first + 1):
            hidden = layer(hidden, attention_mask=ext)[0]
            if number in self.pool_layers:
                pooled.append(masked_mean(hidden, mask))
        return torch.cat(pooled, dim=1)


def doc_vectors(frozen: torch.Tensor, top: torch.Tensor, owner: torch.Tensor, n_docs: int) -> torch.Tensor:
    """Per document: the mean of its windows' [frozen pooled | top pooled], L2-normalised per
    384-wide block (the same as hybrid.document_embedding, in torch so gradients flow)."""
    rows = torch.cat([frozen.to(top.device), top], dim=1) if frozen.numel() else top
    owner = owner.to(rows.device)
    sums = torch.zeros((n_docs, rows.shape[1]), dtype=rows.dtype, device=rows.device).index_add_(0, owner, rows)
    counts = torch.bincount(owner, minlength=n_docs).clamp(min=1).to(rows.dtype)
    mean = (sums / counts[:, None]).reshape(n_docs, -1, HIDDEN)
    return torch.nn.functional.normalize(mean, dim=-1).reshape(n_docs, -1)


# ------------------------------------------------------------------------------------ training
Progress = Callable[[dict[str, Any]], None]


def tune_top_layers(top: TopEncoder, cache: WindowCache, labels: np.ndarray, n_labels: int,
                    cfg: TrainConfig, on_step: Progress | None = None
                    ) -> tuple[list[dict[str, float]], torch.nn.Linear]:
    """Fine-tunes `top` (in place, on its device) on the training documents; returns the loss
    per epoch and the linear head it was tuned with (input: document vector × HEAD_INPUT_SCALE)."""
    n_docs = len(labels)
    device = top.device
    windows_of: list[list[int]] = [[] for _ in range(n_docs)]
    for w, d in enumerate(cache.owner):
        windows_of[d].append(w)
    head = torch.nn.Linear(cache.frozen_pooled.shape[1] + HIDDEN * len(top.pool_layers), n_labels).to(device)
    counts = np.bincount(labels, minlength=n_labels).astype(np.float64)
    class_weight = torch.tensor(counts.sum() / (n_labels * np.maximum(counts, 1)), dtype=torch.float32,
                                device=device)
    optimizer = torch.optim.AdamW([
        {"params": top.parameters(), "lr": cfg.learning_rate},
        {"params": head.parameters(), "lr": cfg.head_learning_rate},
    ], weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(n_docs / cfg.batch_docs)
    warmup = max(1, int(steps * cfg.warmup_fraction))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    rng = np.random.default_rng(cfg.seed)
    frozen = torch.from_numpy(cache.frozen_pooled)
    history = []
    top.train()
    step = 0
    started = time.monotonic()
    for epoch in range(cfg.epochs):
        # Documents of similar length together (less padding), batches in random order.
        order = sorted(rng.permutation(n_docs), key=lambda d: len(cache.states[windows_of[d][0]]) // 16)
        batches = [order[i:i + cfg.batch_docs] for i in range(0, n_docs, cfg.batch_docs)]
        rng.shuffle(batches)
        total = 0.0
        for batch in batches:
            picked: list[int] = []
            owner: list[int] = []
            for k, d in enumerate(batch):
                ws = windows_of[d]
                if len(ws) > cfg.tune_windows_per_doc:
                    ws = sorted(rng.choice(ws, cfg.tune_windows_per_doc, replace=False).tolist())
                picked.extend(ws)
                owner.extend([k] * len(ws))
            pooled_top = top([cache.states[w] for w in picked])
            vectors = doc_vectors(frozen[picked], pooled_top, torch.tensor(owner), len(batch))
            loss = torch.nn.functional.cross_entropy(head(vectors * HEAD_INPUT_SCALE),
                                                     torch.from_numpy(labels[batch]).to(device), weight=class_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            torch.nn.utils.clip_grad_norm_(top.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(batch)
            step += 1
            if on_step is not None:
                on_step({"stage": "fine-tuning", "step": step, "steps": steps, "epoch": epoch + 1,
                         "epochs": cfg.epochs, "loss": round(float(loss), 4)})
            if step % 50 == 0:
                log.info("fine-tuning", extra={"epoch": epoch + 1, "step": f"{step}/{steps}",
                                               "loss": round(float(loss), 4),
                                               "seconds": round(time.monotonic() - started)})
        history.append({"epoch": epoch + 1, "train_loss": round(total / n_docs, 4)})
        log.info("epoch done", extra=history[-1])
    top.eval()
    return history, head


def embed_documents(top: TopEncoder, cache: WindowCache, n_docs: int, batch: int = 64) -> np.ndarray:
    """Document embeddings (as serving computes them) from the cache and the top layers."""
    rows = np.zeros((len(cache.states), HIDDEN * len(top.pool_layers)), dtype=np.float32)
    order = sorted(range(len(cache.states)), key=lambda i: cache.states[i].shape[0])
    with torch.inference_mode():
        for begin in range(0, len(order), batch):
            chunk = order[begin:begin + batch]
            rows[chunk] = top([cache.states[i] for i in chunk]).cpu().numpy()
    vectors = doc_vectors(torch.from_numpy(cache.frozen_pooled).double(), torch.from_numpy(rows).double(),
                          torch.from_numpy(cache.owner), n_docs)
    return vectors.numpy()


def fit_lexical(texts: list[str], min_df: int) -> tuple[Any, Any]:
    """The two TF-IDF vectorizers (character 1-3-grams, word 1-2-grams) fitted on `texts`."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    char = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=min_df, dtype=np.float64)
    word = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, min_df=min_df, dtype=np.float64)
    return char.fit(texts), word.fit(texts)


def lexical_json(char: Any, word: Any) -> dict[str, Any]:
    def block(vec: Any) -> dict[str, Any]:
        return {"vocabulary": sorted(vec.vocabulary_, key=vec.vocabulary_.get),
                "idf": [float(np.float32(x)) for x in vec.idf_]}

    return {"char": {"analyzer": "char", "ngram_range": [1, 3], **block(char)},
            "word": {"analyzer": "word", "ngram_range": [1, 2], **block(word)}}


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    probs: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return probs


def choose_temperature(scores: np.ndarray, gold: np.ndarray) -> float:
    """The factor T minimising the log-loss of softmax(scores × T) on the split the scores are of."""
    best_t, best_loss = 1.0, float("inf")
    for t in np.geomspace(0.5, 50, 60):
        p = softmax(scores * t)
        loss = -float(np.mean(np.log(np.maximum(p[np.arange(len(gold)), gold], 1e-12))))
        if loss < best_loss:
            best_t, best_loss = float(t), loss
    return round(best_t, 4)


def fit_svm(features: Any, labels: np.ndarray, c: float, seed: int, class_weight: str | None = None) -> Any:
    from sklearn.svm import LinearSVC

    return LinearSVC(C=c, random_state=seed, max_iter=5000, class_weight=class_weight).fit(features, labels)


# -------------------------------------------------------------------------------- the pipeline
@dataclass
class EncoderPlan:
    """The pretrained encoder and how training cuts and runs it."""

    tokenizer: E5Tokenizer
    encoder: BertModel
    hybrid: HybridConfig
    lower: int                      # layers run once (frozen)
    frozen_pool: tuple[int, ...]    # pooled layers that lie in the frozen part (pooled by the lower pass)
    tuned_pool: tuple[int, ...]     # pooled layers among the tuned ones (pooled by TopEncoder)
    prefix_ids: list[int]
    content_tokens: int

    @classmethod
    def make(cls, cfg: TrainConfig, base: E5Base | None = None) -> EncoderPlan:
        if base is None:
            base = read_base(find_base_file())
        tokenizer = E5Tokenizer(base)
        n_layers = base.config.num_hidden_layers
        lower, frozen_pool, tuned_pool = split_layers(n_layers, cfg)
        prefix_ids = tokenizer.encode([cfg.prefix.strip()])[0]
        hybrid = HybridConfig(prefix=cfg.prefix, window_tokens=cfg.window_tokens, max_windows=cfg.max_windows,
                              overlap=0, pool_layers=cfg.pool_layers, encoder_layers=n_layers)
        return cls(tokenizer, build_encoder(base), hybrid, lower, frozen_pool, tuned_pool, prefix_ids,
                   cfg.window_tokens - 2 - len(prefix_ids))

    def top_encoder(self) -> TopEncoder:
        """The layers above the frozen part (shared with `encoder`, so tuning them tunes it)."""
        return TopEncoder(torch.nn.ModuleList(self.encoder.encoder.layer[self.lower:]), self.lower, self.tuned_pool)

    def tuned_names(self) -> list[str]:
        """BertModel names of the tuned layers' parameters: what the artifact's delta holds."""
        return [k for k in self.encoder.state_dict() if is_tuned(k, self.lower)]

    def load_tuned(self, values: dict[str, torch.Tensor]) -> None:
        """Replaces the tuned layers' parameters with `values` (BertModel names)."""
        missing = set(self.tuned_names()) - set(values)
        if missing or set(values) - set(self.tuned_names()):
            raise ValueError(f"tuned parameters do not match the {len(self.encoder.encoder.layer) - self.lower} "
                             f"tuned layers (missing {sorted(missing)[:3]})")
        self.encoder.load_state_dict(values, strict=False)

    def windows_for(self, texts: list[str], max_windows: int) -> tuple[list[list[int]], list[int]]:
        """Every text's windows, cut exactly as serving cuts them, with the owner text of each."""
        windows, owners = [], []
        for index, ids in enumerate(self.tokenizer.encode(texts)):
            for window in make_windows(ids, self.tokenizer, self.prefix_ids, self.content_tokens, 0, max_windows):
                windows.append(window)
                owners.append(index)
        return windows, owners


def lower_pass_all(plan: EncoderPlan, parts: dict[str, list[str]], cfg: TrainConfig, data_dir: Path,
                   work_dir: Path | None) -> dict[str, WindowCache]:
    """Stage 2: the frozen lower layers over every window of every part, read from `work_dir`
    when a run with the same inputs already computed them."""
    cache_file = None
    if work_dir is not None:
        key = hashlib.sha256(json.dumps([data_fingerprint(data_dir, cfg), plan.lower, plan.frozen_pool,
                                         cfg.quantize]).encode()).hexdigest()[:16]
        cache_file = work_dir / f"lower-pass-{key}.pt"
    if cache_file is not None and cache_file.is_file():
        log.info("lower pass read from cache", extra={"file": str(cache_file)})
        return {part: WindowCache(**c) for part, c in torch.load(cache_file, weights_only=False).items()}
    # quantize_dynamic copies the model and swaps its Linear layers: still a BertModel
    lower_encoder = cast(BertModel, quantize_linear(plan.encoder)) if cfg.quantize else plan.encoder
    caches = {}
    for part, texts in parts.items():
        windows, owners = plan.windows_for(texts, cfg.max_windows)
        caches[part] = lower_pass(lower_encoder, windows, owners, plan.lower, plan.frozen_pool,
                                  plan.tokenizer.pad_id, label=part)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save({part: asdict(c) for part, c in caches.items()}, cache_file)
    return caches


def split_layers(n_layers: int, cfg: TrainConfig) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """(frozen layers, pool layers among them, pool layers among the tuned ones): the lower pass
    runs and pools the first, TopEncoder the rest."""
    lower = n_layers - cfg.tune_layers
    if not 0 <= lower <= n_layers:
        raise ValueError(f"tune_layers must be 0..{n_layers}")
    if list(cfg.pool_layers) != sorted(set(cfg.pool_layers)) or not all(0 < p <= n_layers for p in cfg.pool_layers):
        raise ValueError(f"pool layers must be ascending layer numbers in 1..{n_layers}")
    return lower, tuple(p for p in cfg.pool_layers if p <= lower), tuple(p for p in cfg.pool_layers if p > lower)


def is_tuned(name: str, lower: int) -> bool:
    """Whether the BertModel parameter `name` belongs to a layer above the `lower` frozen ones."""
    return name.startswith("encoder.layer.") and int(name.split(".")[2]) >= lower


def data_fingerprint(data_dir: Path, cfg: TrainConfig) -> str:
    """What the split and the windows depend on (data files, base, seed, fractions, windows): equal
    fingerprints mean the same fitting, selection and validation texts, cut the same way."""
    files = [sha256_file(data_dir / f) for _, f in datasets_in(data_dir)]
    return hashlib.sha256(json.dumps([BASE_SHA256, files, cfg.seed, cfg.val_fraction, cfg.select_fraction,
                                      cfg.prefix, cfg.window_tokens, cfg.max_windows]).encode()).hexdigest()


def check_tuned_names(plan: EncoderPlan, tuned_diffs: Mapping[str, torch.Tensor]) -> None:
    """Refuses layers tuned elsewhere that name parameters outside this plan's tuned layers."""
    unknown = sorted(set(tuned_diffs) - set(plan.tuned_names()))
    if unknown:
        raise ValueError(f"the tuned layers hold parameters of no tuned layer: {unknown[:3]}")


# What the artifact's delta file holds: its tensors and its metadata (models/delta.py).
DeltaFile = tuple[dict[str, torch.Tensor], dict[str, str]]


def fine_tune(plan: EncoderPlan, cache: WindowCache, labels: np.ndarray, n_labels: int,
              cfg: TrainConfig, on_step: Progress | None = None, tuned_diffs: dict[str, torch.Tensor] | None = None
              ) -> tuple[TopEncoder, DeltaFile, list[dict[str, float]]]:
    """Stage 3: the top layers tuned on `cache` (or set to base + `tuned_diffs`, layers fine-tuned
    on another machine, see offload.py), then encoded as the artifact ships them and set to the values
    serving will decode, so the embeddings computed next are the ones serving will compute.
    Returns the top encoder, the delta file's contents and the loss history."""
    names = plan.tuned_names()
    state = plan.encoder.state_dict()
    base = {k: state[k].detach().clone() for k in names}
    top = plan.top_encoder()
    history: list[dict[str, float]] = []
    if tuned_diffs is not None:   # names checked by train() before the lower pass
        plan.load_tuned({k: base[k] + v.to(torch.float32) for k, v in tuned_diffs.items()})
    elif cfg.tune_layers and cfg.epochs:
        history, _ = tune_top_layers(top, cache, labels, n_labels, cfg, on_step)
    state = plan.encoder.state_dict()
    encoded, metadata = delta.encode_int8_row_diff({k: state[k] for k in names}, base)
    plan.load_tuned(delta.decode(encoded, metadata, base))
    return top, (encoded, metadata), history


@dataclass
class HeadChoice:
    """Stage 5a's result: the head settings chosen on the selection split."""

    emb_scale: float
    class_weight: str | None
    temperature: float
    candidates: list[dict[str, Any]]
    selection_report: dict[str, dict[str, float]]


class Features:
    """[TF-IDF | scale × embedding] rows for the documents of a part, with the vectorizers
    fitted on one list of texts."""

    def __init__(self, fit_texts: list[str], min_df: int) -> None:
        self.char, self.word = fit_lexical(fit_texts, min_df)

    def lexical(self, texts: list[str]) -> Any:
        import scipy.sparse as sp

        return sp.hstack([self.char.transform(texts), self.word.transform(texts)]).tocsr()

    @staticmethod
    def joined(lex: Any, emb: np.ndarray, scale: float) -> Any:
        import scipy.sparse as sp

        return sp.hstack([lex, sp.csr_matrix(scale * emb)]).tocsr()


def macro_f1_by_dataset(clf: Any, rows: Any, gold: list[str], datasets: list[str],
                        labels: list[str]) -> dict[str, dict[str, float]]:
    """Accuracy and macro-F1 of `clf` on `rows`, per data set."""
    predicted = [labels[i] for i in clf.predict(rows)]
    result = {}
    for name in sorted(set(datasets)):
        idx = [i for i, d in enumerate(datasets) if d == name]
        report = classification_report([gold[i] for i in idx], [predicted[i] for i in idx])
        result[name] = {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}
    return result


def choose_head(split: Split, emb_train: np.ndarray, labels: list[str], y_train: np.ndarray,
                cfg: TrainConfig) -> HeadChoice:
    """Stage 5a: each candidate head is fitted on the fitting part and scored on the selection
    split (mean macro-F1 over the data sets: macro-F1 rewards the small petition categories);
    the best one's selection scores choose the temperature. The validation split is not read."""
    texts = [x.text for x in split.train_items]
    features = Features([texts[i] for i in split.fit], cfg.min_df)
    lex_fit = features.lexical([texts[i] for i in split.fit])
    lex_sel = features.lexical([texts[i] for i in split.select])
    gold_sel = [split.train_items[i].label for i in split.select]
    datasets_sel = [split.dataset_of[i] for i in split.select]
    candidates: list[dict[str, Any]] = []
    best: tuple[float, float, str | None, Any, dict[str, dict[str, float]]] | None = None
    for scale in cfg.emb_scales:
        for class_weight in (None, "balanced"):
            clf = fit_svm(Features.joined(lex_fit, emb_train[split.fit], scale), y_train[split.fit],
                          cfg.svm_c, cfg.seed, class_weight)
            report = macro_f1_by_dataset(clf, Features.joined(lex_sel, emb_train[split.select], scale),
                                         gold_sel, datasets_sel, labels)
            score = float(np.mean([r["macro_f1"] for r in report.values()]))
            candidates.append({"emb_scale": scale, "class_weight": class_weight, "selection": report})
            log.info("head candidate", extra=candidates[-1])
            if best is None or score > best[0]:
                best = (score, scale, class_weight, clf, report)
    assert best is not None
    _, scale, class_weight, clf, report = best
    scores = clf.decision_function(Features.joined(lex_sel, emb_train[split.select], scale))
    temperature = choose_temperature(scores, y_train[split.select])
    return HeadChoice(scale, class_weight, temperature, candidates, report)


def fit_final_head(split: Split, emb: dict[str, np.ndarray], labels: list[str], y_train: np.ndarray,
                   choice: HeadChoice, cfg: TrainConfig) -> tuple[Any, Features, dict[str, Any]]:
    """Stage 5b: the chosen head refitted on all training data; each branch alone is fitted the
    same way and reported on the untouched validation split (the manifest's ablation)."""
    texts = [x.text for x in split.train_items]
    features = Features(texts, cfg.min_df)
    lex_train = features.lexical(texts)
    svm = fit_svm(Features.joined(lex_train, emb["train"], choice.emb_scale), y_train, cfg.svm_c, cfg.seed,
                  choice.class_weight)
    val_items = [(name, x) for name, d in split.by_dataset.items() for x in d["val"]]
    val_sets, val_gold = [name for name, _ in val_items], [x.label for _, x in val_items]
    val_lex = features.lexical([x.text for _, x in val_items])
    val_emb = np.vstack([emb[f"val-{name}"] for name in split.by_dataset])
    ablation = {
        "lexical_only": macro_f1_by_dataset(fit_svm(lex_train, y_train, cfg.svm_c, cfg.seed, choice.class_weight),
                                            val_lex, val_gold, val_sets, labels),
        "encoder_only": macro_f1_by_dataset(fit_svm(emb["train"], y_train, cfg.svm_c, cfg.seed, choice.class_weight),
                                            val_emb, val_gold, val_sets, labels),
    }
    return svm, features, ablation


def write_artifact(staging: Path, svm: Any, features: Features, emb_scale: float, labels: list[str],
                   delta_file: DeltaFile) -> None:
    """Stage 6a: head, encoder delta and lexical vocabulary, as serving reads them."""
    n_lex = len(features.char.vocabulary_) + len(features.word.vocabulary_)
    weights = svm.coef_  # (n_labels, n_char + n_word + emb)
    lex_weight = weights[:, :n_lex].T
    emb_weight = weights[:, n_lex:] * emb_scale
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # The n-gram weights are most of the artifact: int8 per n-gram row (int8_rows.py) halves them
    # against fp16; the measured numbers below are those of these stored weights.
    lex_values, lex_scale = int8_rows.quantize(torch.from_numpy(np.ascontiguousarray(lex_weight)))
    save_file({"emb_weight": torch.from_numpy(np.ascontiguousarray(emb_weight)).to(torch.float32),
               "lex_weight": lex_values, "lex_weight" + int8_rows.SCALE_SUFFIX: lex_scale,
               "bias": torch.from_numpy(svm.intercept_.copy()).to(torch.float32)}, str(staging / HEAD_FILE),
              metadata=head_metadata(labels))
    save_file(delta_file[0], str(staging / DELTA_FILE), metadata=delta_file[1])
    (staging / LEXICAL_FILE).write_text(json.dumps(lexical_json(features.char, features.word), ensure_ascii=False),
                                        encoding="utf-8")


def train(data_dir: Path, out: Path, cfg: TrainConfig, work_dir: Path | None = None, *,
          on_progress: Progress | None = None, extra_manifest: dict[str, Any] | None = None,
          tuned_layers: Path | None = None) -> dict[str, Any]:
    """Trains, writes and measures the model; returns its manifest. The stages are the module's steps.

    `on_progress` is told each stage and each fine-tuning step; `extra_manifest` is merged into the
    manifest (a training job's id, dataset versions and code version); `tuned_layers` is an
    `offload tune` output used in place of stage 3 (its settings replace cfg's tuning settings)."""
    offload_report: dict[str, Any] | None = None
    tuned_diffs: dict[str, torch.Tensor] | None = None
    if tuned_layers is not None:
        from .offload import read_tuned

        cfg, tuned_diffs, offload_report = read_tuned(tuned_layers, data_dir, cfg)
    def stage(name: str) -> None:
        if on_progress is not None:
            on_progress({"stage": name})

    started = time.monotonic()
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.torch_threads)
    torch.use_deterministic_algorithms(True, warn_only=True)

    # 1. data
    split = Split.make(data_dir, cfg)
    labels = sorted({x.label for x in split.train_items})
    label_index = {label: i for i, label in enumerate(labels)}
    y_train = np.array([label_index[x.label] for x in split.train_items])
    log.info("data", extra={"train": len(split.fit), "selection": len(split.select),
                            "val": {k: len(v["val"]) for k, v in split.by_dataset.items()}, "labels": len(labels)})

    stage("lower-pass")
    # 2. lower encoder pass over every text (the selection split is cut from the "train" part later)
    plan = EncoderPlan.make(cfg)
    if tuned_diffs is not None:
        check_tuned_names(plan, tuned_diffs)   # before the lower pass, which takes minutes
    parts = {"train": [x.text for x in split.train_items],
             **{f"val-{k}": [x.text for x in v["val"]] for k, v in split.by_dataset.items()}}
    caches = lower_pass_all(plan, parts, cfg, data_dir, work_dir)
    lower_seconds = round(time.monotonic() - started)
    log.info("lower pass done", extra={"seconds": lower_seconds})

    # 3. fine-tuning on the fitting part only, so the selection split's embeddings are unseen
    stage("fine-tuning")
    top, delta_file, history = fine_tune(plan, caches["train"].subset(split.fit), y_train[split.fit],
                                         len(labels), cfg, on_progress, tuned_diffs)
    if offload_report is not None:
        history = offload_report["history"]
    stage("head")
    tune_seconds = round(time.monotonic() - started) - lower_seconds

    # 4. document embeddings as serving computes them
    serving_top = cast(TopEncoder, quantize_linear(top)) if cfg.quantize else top
    emb = {part: embed_documents(serving_top, cache, len(parts[part])) for part, cache in caches.items()}

    # 5. the head: settings chosen on the selection split, then refitted on all training data
    choice = choose_head(split, emb["train"], labels, y_train, cfg)
    svm, features, ablation = fit_final_head(split, emb, labels, y_train, choice, cfg)
    hybrid = dataclasses.replace(plan.hybrid, temperature=choice.temperature)

    # 6. the artifact, then its numbers measured through the serving path on the untouched split
    staging = out.with_name(out.name + ".staging")
    write_artifact(staging, svm, features, choice.emb_scale, labels, delta_file)
    manifest = build_manifest(cfg, labels, hybrid, features, history, split, data_dir,
                              {"lower_pass": lower_seconds, "fine_tuning": tune_seconds,
                               "total": round(time.monotonic() - started)})
    if offload_report is not None:
        manifest["training"]["fine_tuned_elsewhere"] = {k: v for k, v in offload_report.items() if k != "history"}
    manifest.update(extra_manifest or {})
    write_manifest(staging, manifest)
    stage("measuring")
    model = load_model(staging, InferenceOptions(quantize=cfg.quantize, max_windows=cfg.max_windows,
                                                 window_tokens=cfg.window_tokens))
    metrics = {name: {k: v for k, v in evaluate(model, d["val"]).items() if k not in ("model", "version")}
               for name, d in split.by_dataset.items()}
    manifest["metrics"] = {
        "validation": metrics, "ablation_validation": ablation,
        "head_selection": {"chosen": {"emb_scale": choice.emb_scale, "class_weight": choice.class_weight,
                                      "temperature": choice.temperature, "selection": choice.selection_report},
                           "candidates": choice.candidates},
        "measured_with": "doctag model eval path (load_model + probabilities) on the validation split, which "
                         f"no training or selection step read; quantize={cfg.quantize}"}
    write_manifest(staging, manifest)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    summary = {name: {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]} for name, m in metrics.items()}
    log.info("model written", extra={"out": str(out), "validation": summary, "ablation": ablation,
                                     "seconds": round(time.monotonic() - started)})
    return manifest


def build_manifest(cfg: TrainConfig, labels: list[str], hybrid: HybridConfig, features: Features,
                   history: list[dict[str, float]], split: Split, data_dir: Path,
                   seconds: dict[str, int]) -> dict[str, Any]:
    """Stage 6b: what the artifact is, how it was trained and from which data."""
    select_by_dataset = {name: sum(1 for i in split.select if split.dataset_of[i] == name)
                         for name in split.by_dataset}
    return {
        "name": cfg.name,
        "version": time.strftime("%Y%m%d", time.gmtime()) + f"-e5hybrid-s{cfg.seed}",
        "architecture": ARCHITECTURE,
        "labels": labels,
        "description": f"multilingual-e5-small ({cfg.tune_layers} top layers fine-tuned) + TF-IDF character/word "
                       "n-grams, one linear head",
        "base": {"package": f"{BASE_PACKAGE}==0.3.0", "file": BASE_FILE, "sha256": BASE_SHA256,
                 "model": "intfloat/multilingual-e5-small (4-bit Q4_0 weights, dequantised)"},
        "hybrid": hybrid.as_dict(),
        "training": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
                     "lexical_features": {"char": len(features.char.vocabulary_),
                                          "word": len(features.word.vocabulary_)},
                     "history": history, "seconds": seconds,
                     "torch": torch.__version__, "python": platform.python_version()},
        "training_data": {
            name: {"file": filename, "sha256": sha256_file(data_dir / filename),
                   "train": len(split.by_dataset[name]["train"]) - select_by_dataset[name],
                   "selection": select_by_dataset[name],
                   "validation": len(split.by_dataset[name]["val"])}
            for name, filename in datasets_in(data_dir)},
    }


def main_from_args(args: argparse.Namespace) -> Path:
    cfg = config_from_args(args)
    for _, filename in DATASETS:
        if not (args.data_dir / filename).is_file():
            raise SystemExit(f"--data-dir {args.data_dir}: {filename} is missing")
    train(args.data_dir, args.out, cfg, work_dir=args.work_dir, tuned_layers=args.tuned_layers)
    out: Path = args.out
    return out


def main(argv: list[str] | None = None) -> None:
    from services.common.logging import configure_logging

    configure_logging("train", "INFO")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    main_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    main()
