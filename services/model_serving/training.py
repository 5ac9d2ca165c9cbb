"""Trains the first tagging model from scratch and writes a servable, checksummed artifact.

    python -m services.model_serving.training --data-dir ../shared/data \
        --out services/model_serving/artifacts/doctag-tagger [--seed 13] [--max-minutes 12]

What it does, in order:
1. reads headlines and petitions, holds out a seeded, stratified validation split of each;
2. trains a WordPiece tokenizer on the training split only;
3. trains a small BERT (`BertForSequenceClassification`, random init: no pretrained weights)
   on the union of both label sets, with a wall-clock guard;
4. saves config, weights (float16 safetensors, to keep the committed file small), tokenizer
   and a manifest with checksums;
5. loads the saved artifact through `TaggingModel` (the serving code path, windows and
   aggregation included), computes accuracy and macro-F1 per dataset on the validation
   splits, prints them and records them in the manifest.

Reproducible: fixed seed for the split, the initialisation, the data order and dropout.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast
from transformers import get_linear_schedule_with_warmup

from .inference import InferenceOptions, TaggingModel, encode_windows, pad_batch
from .manifest import sha256_file, write_manifest

log = logging.getLogger("doctag.training")

MODEL_NAME = "doctag-tagger"
DATASETS = ("headlines", "petitions")
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass(frozen=True)
class Hyperparameters:
    vocab_size: int = 12000
    hidden_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 1024
    max_length: int = 256          # tokens per window, [CLS] and [SEP] included
    window_overlap: int = 32
    max_windows: int = 16
    dropout: float = 0.1
    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 7e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    max_grad_norm: float = 1.0
    val_fraction: float = 0.1
    seed: int = 13
    torch_threads: int = 2


@dataclass
class Example:
    text: str
    label: str
    dataset: str


def document_text(record: dict[str, Any]) -> str:
    """The text a document is tagged by: a petition's title and body, a headline's text."""
    title = (record.get("title") or "").strip()
    body = (record.get("text") or "").strip()
    return f"{title}\n{body}" if title else body


def load_dataset(path: Path, dataset: str) -> list[Example]:
    examples = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if not record.get("label"):
                raise ValueError(f"{path}:{line_no}: record without a label")
            examples.append(Example(document_text(record), str(record["label"]), dataset))
    return examples


def stratified_split(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Per label, a seeded shuffle; the first `fraction` (at least one) goes to validation."""
    by_label: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        by_label[example.label].append(example)
    rng = random.Random(seed)
    train: list[Example] = []
    val: list[Example] = []
    for label in sorted(by_label):
        group = list(by_label[label])
        rng.shuffle(group)
        n_val = max(1, round(len(group) * fraction))
        val.extend(group[:n_val])
        train.extend(group[n_val:])
    return train, val


def train_tokenizer(texts: list[str], vocab_size: int, max_length: int) -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer (NFKC, whitespace/punctuation pre-split) wrapped for AutoTokenizer.

    The trainer creates the continuing-subword tokens ("##가") in hash-map order, and their
    ids break ties between equally frequent merges, so two runs on the same data can give
    different vocabularies (huggingface/tokenizers#1794). Handing it every "##<char>" up
    front, in sorted order, fixes those ids and makes training reproducible; the tokenizer
    is then rebuilt from the learned vocabulary so only the five real special tokens are
    special.
    """
    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    continuing_chars: set[str] = set()
    for text in texts:
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
            continuing_chars.update(word[1:])
    seeded = SPECIAL_TOKENS + [f"##{c}" for c in sorted(continuing_chars)]

    trained = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    trained.normalizer = normalizer
    trained.pre_tokenizer = pre_tokenizer
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=seeded,
                                        continuing_subword_prefix="##", show_progress=False)
    trained.train_from_iterator(texts, trainer=trainer, length=len(texts))

    tokenizer = Tokenizer(models.WordPiece(vocab=trained.get_vocab(), unk_token="[UNK]",
                                           max_input_chars_per_word=100))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_length)


def epoch_batches(windows: list[list[list[int]]], labels: list[int], batch_size: int,
                  rng: random.Random) -> list[tuple[list[list[int]], list[int]]]:
    """One epoch: one window per document (a different one each epoch for long documents),
    shuffled, grouped by length into batches (little padding), batches shuffled."""
    items = [(rng.choice(doc_windows), label) for doc_windows, label in zip(windows, labels, strict=True)]
    rng.shuffle(items)
    chunk = batch_size * 50
    batches = []
    for begin in range(0, len(items), chunk):
        part = sorted(items[begin:begin + chunk], key=lambda item: len(item[0]))
        for b in range(0, len(part), batch_size):
            group = part[b:b + batch_size]
            batches.append(([w for w, _ in group], [y for _, y in group]))
    rng.shuffle(batches)
    return batches


def f1_report(gold: list[str], predicted: list[str], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 over the dataset's own labels, and per-label F1.

    A prediction outside the dataset's label set (the model has one softmax over both
    sets) simply counts as wrong.
    """
    per_label: dict[str, float] = {}
    for label in labels:
        tp = sum(1 for g, p in zip(gold, predicted) if g == label and p == label)
        fp = sum(1 for g, p in zip(gold, predicted) if g != label and p == label)
        fn = sum(1 for g, p in zip(gold, predicted) if g == label and p != label)
        per_label[label] = 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
    accuracy = sum(1 for g, p in zip(gold, predicted) if g == p) / len(gold)
    return {
        "rows": len(gold),
        "accuracy": round(accuracy, 4),
        "macro_f1": round(float(np.mean(list(per_label.values()))), 4),
        "per_label_f1": {k: round(v, 4) for k, v in per_label.items()},
    }


def evaluate(model: TaggingModel, val: list[Example], batch_texts: int = 64) -> dict[str, Any]:
    """Validation metrics per dataset, through the serving inference path."""
    results = {}
    for dataset in DATASETS:
        rows = [e for e in val if e.dataset == dataset]
        predicted: list[str] = []
        for begin in range(0, len(rows), batch_texts):
            texts = [e.text for e in rows[begin:begin + batch_texts]]
            predicted.extend(p.tags[0][0] for p in model.predict_detailed(texts, top_k=1))
        labels = sorted({e.label for e in rows})
        results[dataset] = f1_report([e.label for e in rows], predicted, labels)
    return results


def train(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + args.max_minutes * 60
    hp = Hyperparameters(seed=args.seed, epochs=args.epochs, torch_threads=args.threads)
    random.seed(hp.seed)
    np.random.seed(hp.seed)
    torch.manual_seed(hp.seed)
    torch.set_num_threads(hp.torch_threads)

    data_dir: Path = args.data_dir
    files = {"headlines": data_dir / "headlines_train.jsonl", "petitions": data_dir / "petitions_train.jsonl"}
    train_set: list[Example] = []
    val_set: list[Example] = []
    data_info: dict[str, Any] = {"split_seed": hp.seed, "val_fraction": hp.val_fraction, "datasets": {}}
    label_sets: dict[str, list[str]] = {}
    for dataset, path in files.items():
        examples = load_dataset(path, dataset)
        train_part, val_part = stratified_split(examples, hp.val_fraction, hp.seed)
        train_set += train_part
        val_set += val_part
        label_sets[dataset] = sorted({e.label for e in examples})
        data_info["datasets"][dataset] = {
            "file": path.name, "sha256": sha256_file(path), "rows": len(examples),
            "train_rows": len(train_part), "val_rows": len(val_part), "labels": label_sets[dataset],
        }
        log.info("loaded %s: %d rows, %d train / %d validation", dataset, len(examples), len(train_part), len(val_part))
    overlap = set(label_sets["headlines"]) & set(label_sets["petitions"])
    if overlap:
        raise ValueError(f"label sets overlap: {sorted(overlap)}")
    labels = label_sets["headlines"] + label_sets["petitions"]
    label_ids = {label: i for i, label in enumerate(labels)}

    tokenizer = train_tokenizer([e.text for e in train_set], hp.vocab_size, hp.max_length)
    log.info("tokenizer trained: %d tokens (%.0fs)", len(tokenizer), time.monotonic() - started)

    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=hp.hidden_size, num_hidden_layers=hp.num_layers,
        num_attention_heads=hp.num_heads, intermediate_size=hp.intermediate_size,
        max_position_embeddings=hp.max_length, hidden_dropout_prob=hp.dropout,
        attention_probs_dropout_prob=hp.dropout, pad_token_id=tokenizer.pad_token_id,
        num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label_ids,
        problem_type="single_label_classification",
    )
    model = BertForSequenceClassification(config)
    n_params = sum(p.numel() for p in model.parameters())

    # The same windowing as serving: every document becomes its (capped, spread) windows.
    windows_by_doc = []
    for begin in range(0, len(train_set), 1024):
        part = train_set[begin:begin + 1024]
        windows, owners, _ = encode_windows(tokenizer, [e.text for e in part], max_length=hp.max_length,
                                            overlap=hp.window_overlap, max_windows=hp.max_windows)
        grouped: list[list[list[int]]] = [[] for _ in part]
        for window, owner in zip(windows, owners, strict=True):
            grouped[owner].append(window)
        windows_by_doc.extend(grouped)
    train_labels = [label_ids[e.label] for e in train_set]

    rng = random.Random(hp.seed)
    plan = [epoch_batches(windows_by_doc, train_labels, hp.batch_size, rng) for _ in range(hp.epochs)]
    total_steps = sum(len(batches) for batches in plan)
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total_steps * hp.warmup_fraction), total_steps)
    log.info("training %d parameters, %d epochs, %d steps", n_params, hp.epochs, total_steps)

    model.train()
    step = 0
    stopped_by_guard = False
    epochs_completed = 0
    loss_window: list[float] = []
    for epoch, batches in enumerate(plan):
        for windows, batch_labels in batches:
            if time.monotonic() > deadline:
                stopped_by_guard = True
                break
            ids, mask = pad_batch(windows, tokenizer.pad_token_id)
            out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor(batch_labels))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), hp.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_window.append(out.loss.item())
            if step % 100 == 0:
                log.info("epoch %d step %d/%d loss %.4f (%.0fs)", epoch + 1, step, total_steps,
                         float(np.mean(loss_window)), time.monotonic() - started)
                loss_window.clear()
        if stopped_by_guard:
            log.warning("wall-clock guard reached after %d of %d steps", step, total_steps)
            break
        epochs_completed += 1
    train_seconds = time.monotonic() - started

    out_dir: Path = args.out.resolve()
    tmp_dir = out_dir.with_name(out_dir.name + ".tmp")
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    tmp_dir.mkdir(parents=True)
    model.eval()
    # float16 on disk halves the committed size; serving loads it back as float32.
    model.half().save_pretrained(tmp_dir, safe_serialization=True)
    tokenizer.save_pretrained(tmp_dir)
    manifest: dict[str, Any] = {
        "name": MODEL_NAME,
        "version": args.version,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "architecture": "BertForSequenceClassification, trained from scratch (random initialisation)",
        "task": "single-label classification over the union of both label sets (softmax)",
        "labels": labels,
        "label_sets": label_sets,
        "preprocessing": {
            "document_text": "petitions: title + newline + text; headlines: text",
            "tokenizer": f"WordPiece, NFKC + lowercase, BERT pre-tokenizer, {len(tokenizer)} tokens, "
                         "trained on the training split only",
            "windows": {"max_length": hp.max_length, "overlap": hp.window_overlap, "max_windows": hp.max_windows,
                        "aggregation": "mean of window probabilities"},
        },
        "training_data": data_info,
        "hyperparameters": asdict(hp),
        "parameters": n_params,
        "training": {"steps": step, "steps_planned": total_steps, "epochs_completed": epochs_completed,
                     "stopped_by_time_guard": stopped_by_guard, "max_minutes": args.max_minutes,
                     "wall_time_s": round(train_seconds, 1), "torch": torch.__version__},
    }
    write_manifest(tmp_dir, manifest)

    options = InferenceOptions(max_windows=hp.max_windows, overlap=hp.window_overlap)
    served = TaggingModel.load(tmp_dir, options=options, torch_threads=hp.torch_threads)
    metrics = evaluate(served, val_set)
    manifest["validation"] = {"inference": asdict(options), **metrics}
    manifest["training"]["total_wall_time_s"] = round(time.monotonic() - started, 1)
    write_manifest(tmp_dir, manifest)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp_dir.rename(out_dir)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="directory with the *_train.jsonl files")
    parser.add_argument("--out", type=Path, required=True, help="artifact directory to (re)create")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--max-minutes", type=float, default=12.0, help="wall-clock guard for training")
    parser.add_argument("--epochs", type=int, default=Hyperparameters.epochs)
    parser.add_argument("--threads", type=int, default=Hyperparameters.torch_threads)
    parser.add_argument("--version", default="1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    manifest = train(args)
    print(f"model {manifest['name']} v{manifest['version']} -> {args.out}")
    print(f"training: {manifest['training']}")
    for dataset in DATASETS:
        m = manifest["validation"][dataset]
        print(f"validation {dataset}: rows={m['rows']} accuracy={m['accuracy']:.4f} macro_f1={m['macro_f1']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
