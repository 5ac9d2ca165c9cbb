"""`doctag model eval`: accuracy, macro-F1 and per-label F1 of a model on a labelled JSONL file.

Records are shaped like the training data: `text`, optional `title`, `label`. The text a
model reads is built by `document_text` (title and body), the one function training uses
too, and predictions come from `load_model` + `probabilities`: the stages model-serving's
batcher runs, with the service's own inference options (the same DOCTAG_* settings), so
the numbers printed are the numbers the service would produce.

Macro-F1 is the mean of the F1 of every label present in the file; a prediction of a label
the file does not contain counts against the recall of the true label.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: str


def document_text(record: dict[str, Any]) -> str:
    """The text a document is tagged by: a petition's title and body, a headline's text."""
    title = str(record.get("title") or "").strip()
    body = str(record.get("text") or "").strip()
    return f"{title}\n{body}" if title else body


def read_labelled(path: Path) -> list[LabelledText]:
    """Reads a JSONL file; raises ValueError naming the line of a record without text or label."""
    items = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not record.get("label"):
                raise ValueError(f"{path}:{line_no}: record without a 'label'")
            text = document_text(record)
            if not text:
                raise ValueError(f"{path}:{line_no}: record without 'text'")
            items.append(LabelledText(text, str(record["label"])))
    if not items:
        raise ValueError(f"{path}: no records")
    return items


def classification_report(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    """accuracy, macro_f1 (over the gold labels) and per-label precision/recall/F1/support."""
    if len(gold) != len(predicted) or not gold:
        raise ValueError("need one prediction per gold label, and at least one")
    true_pos = Counter(g for g, p in zip(gold, predicted, strict=True) if g == p)
    gold_count = Counter(gold)
    pred_count = Counter(predicted)
    per_label = {}
    for label in sorted(gold_count):
        tp = true_pos[label]
        precision = tp / pred_count[label] if pred_count[label] else 0.0
        recall = tp / gold_count[label]
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[label] = {"precision": round(precision, 4), "recall": round(recall, 4),
                            "f1": round(f1, 4), "support": gold_count[label]}
    accuracy = sum(true_pos.values()) / len(gold)
    macro_f1 = sum(v["f1"] for v in per_label.values()) / len(per_label)
    return {"n": len(gold), "accuracy": round(accuracy, 4), "macro_f1": round(macro_f1, 4), "per_label": per_label}


def evaluate(model: Any, items: Sequence[LabelledText], *, batch_max_windows: int = 16,
             chunk: int = 256) -> dict[str, Any]:
    """Runs `model` (a loaded WindowModel) over the items and reports the metrics."""
    from services.model_serving.models.base import probabilities

    predicted: list[str] = []
    for begin in range(0, len(items), chunk):
        texts = [item.text for item in items[begin:begin + chunk]]
        probs = probabilities(model, texts, batch_max_windows=batch_max_windows)
        predicted.extend(model.labels[int(i)] for i in probs.argmax(axis=1))
    report = classification_report([item.label for item in items], predicted)
    return {"model": model.name, "version": model.version, **report}
