"""The promotion rule and the evaluation metrics it reads."""
from __future__ import annotations

from services.model_serving.jobs.promotion import classification_metrics, decide


def metrics(macro: float, **f1: float) -> dict:
    return {"macro_f1": macro, "per_label": {k: {"f1": v} for k, v in f1.items()}}


def test_metrics_per_label_and_confusion_matrix() -> None:
    m, confusion = classification_metrics(["경제", "경제", "정치", "사회"], ["경제", "정치", "정치", "경제"])
    assert m["accuracy"] == 0.5 and m["per_label"]["경제"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5,
                                                               "support": 2}
    assert m["per_label"]["사회"]["f1"] == 0.0 and m["macro_f1"] == round((0.5 + 0.6667 + 0.0) / 3, 4)
    assert confusion == {"labels": ["경제", "사회", "정치"], "matrix": [[1, 0, 1], [1, 0, 0], [0, 0, 1]]}


def test_promoted_only_when_better_by_the_margin_on_every_set_with_no_label_regressing() -> None:
    prod = {"headlines": metrics(0.870, 경제=0.85, 정치=0.89)}
    better = {"headlines": metrics(0.880, 경제=0.86, 정치=0.90)}
    assert decide(better, prod, margin=0.005, max_label_drop=0.05).promote
    assert not decide({"headlines": metrics(0.873, 경제=0.86, 정치=0.886)}, prod, margin=0.005,
                      max_label_drop=0.05).promote, "within the margin"
    regress = decide({"headlines": metrics(0.900, 경제=0.99, 정치=0.80)}, prod, margin=0.005, max_label_drop=0.05)
    assert not regress.promote and any("정치" in r for r in regress.reasons)
    two = decide({"headlines": metrics(0.9, 경제=0.9, 정치=0.9), "petitions": metrics(0.50, 행정=0.5)},
                 {**prod, "petitions": metrics(0.52, 행정=0.52)}, margin=0.005, max_label_drop=0.05)
    assert not two.promote and any(r.startswith("petitions") for r in two.reasons)
    missing = decide({"headlines": metrics(0.95, 경제=0.95)}, {"headlines": None}, margin=0.0, max_label_drop=1)
    assert not missing.promote and "admin decides" in missing.reasons[0]
    assert not decide({}, {}, margin=0.0, max_label_drop=1).promote
