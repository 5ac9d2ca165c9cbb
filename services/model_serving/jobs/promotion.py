"""Evaluation metrics of a version on a fixed evaluation set, and the promotion rule.

A trained version becomes `candidate` always. It becomes `production` by itself only when, on
every task's evaluation set it was measured on, its macro-F1 beats production's by at least
`margin` and no label's F1 fell by more than `max_label_drop`; otherwise an admin decides (the
alias API), and a rollback is the alias moved back (`PUT /api/v1/models/{name}/aliases/production`).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def classification_metrics(gold: Sequence[str], predicted: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, confusion): accuracy, macro-F1 over the gold labels, per-label precision/recall/F1/support;
    the confusion matrix as {"labels": [...], "matrix": [[count of gold i predicted j]]}."""
    if len(gold) != len(predicted) or not gold:
        raise ValueError("need one prediction per gold label, and at least one")
    hits = Counter(g for g, p in zip(gold, predicted, strict=True) if g == p)
    gold_n, pred_n = Counter(gold), Counter(predicted)
    per_label = {}
    for label in sorted(gold_n):
        precision = hits[label] / pred_n[label] if pred_n[label] else 0.0
        recall = hits[label] / gold_n[label]
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[label] = {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
                            "support": gold_n[label]}
    labels = sorted(set(gold) | set(predicted))
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, predicted, strict=True):
        matrix[index[g]][index[p]] += 1
    metrics = {"n": len(gold), "accuracy": round(sum(hits.values()) / len(gold), 4),
               "macro_f1": round(sum(v["f1"] for v in per_label.values()) / len(per_label), 4),
               "per_label": per_label}
    return metrics, {"labels": labels, "matrix": matrix}


@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "reasons": self.reasons}


def decide(candidate: dict[str, dict[str, Any]], production: dict[str, dict[str, Any] | None], *,
           margin: float, max_label_drop: float) -> Decision:
    """`candidate` / `production`: task → metrics on the same evaluation set (production None: not measured)."""
    reasons: list[str] = []
    if not candidate:
        return Decision(False, ["no evaluation set for the tasks it was trained on; an admin decides"])
    for task, cand in sorted(candidate.items()):
        prod = production.get(task)
        if prod is None:
            reasons.append(f"{task}: production has no evaluation on this set; an admin decides")
            continue
        gain = cand["macro_f1"] - prod["macro_f1"]
        if gain < margin:
            reasons.append(f"{task}: macro-F1 {cand['macro_f1']:.4f} against production {prod['macro_f1']:.4f} "
                           f"(needs +{margin:.4f})")
        for label, p in sorted(prod["per_label"].items()):
            c = cand["per_label"].get(label, {"f1": 0.0})
            if p["f1"] - c["f1"] > max_label_drop:
                reasons.append(f"{task}: label {label} F1 {c['f1']:.4f} against {p['f1']:.4f} "
                               f"(drops more than {max_label_drop:.4f})")
    return Decision(not reasons, reasons or ["beats production on every evaluation set with no label regressing"])
