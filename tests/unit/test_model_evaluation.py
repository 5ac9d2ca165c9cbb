"""evaluation.py: the metrics `doctag model eval` prints, the text a record is read as, and
the reading of labelled JSONL files."""
from __future__ import annotations

from pathlib import Path

import pytest

from services.model_training.evaluation import (
    LabelledText,
    classification_report,
    document_text,
    read_labelled,
)


def test_perfect_predictions() -> None:
    gold = ["경제", "스포츠", "스포츠", "정치"]
    report = classification_report(gold, gold)
    assert report["n"] == 4 and report["accuracy"] == 1.0 and report["macro_f1"] == 1.0
    assert report["per_label"] == {
        "경제": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
        "스포츠": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2},
        "정치": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
    }


def test_a_label_never_predicted_scores_zero_and_counts_in_the_macro_mean() -> None:
    gold = ["경제", "경제", "스포츠", "정치"]
    predicted = ["경제", "경제", "스포츠", "경제"]   # 정치 is never predicted
    report = classification_report(gold, predicted)
    assert report["accuracy"] == 0.75
    assert report["per_label"]["정치"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    economy = report["per_label"]["경제"]
    assert (economy["precision"], economy["recall"], economy["support"]) == (round(2 / 3, 4), 1.0, 2)
    assert economy["f1"] == 0.8
    assert report["macro_f1"] == round((0.8 + 1.0 + 0.0) / 3, 4)


def test_a_predicted_label_absent_from_gold_lowers_recall_but_is_not_averaged() -> None:
    gold = ["경제", "경제", "스포츠", "스포츠"]
    predicted = ["경제", "세계", "스포츠", "스포츠"]   # 세계 is not in the file
    report = classification_report(gold, predicted)
    assert set(report["per_label"]) == {"경제", "스포츠"}, "macro-F1 is over the labels of the file"
    assert report["per_label"]["경제"] == {"precision": 1.0, "recall": 0.5, "f1": round(2 / 3, 4), "support": 2}
    assert report["accuracy"] == 0.75
    assert report["macro_f1"] == round((round(2 / 3, 4) + 1.0) / 2, 4)


def test_matches_scikit_learn_on_the_gold_labels() -> None:
    from sklearn.metrics import f1_score

    gold = ["a", "b", "c", "a", "b", "c", "a", "a", "b", "c"]
    predicted = ["a", "b", "b", "a", "c", "c", "b", "a", "x", "c"]
    report = classification_report(gold, predicted)
    expected = f1_score(gold, predicted, labels=sorted(set(gold)), average="macro", zero_division=0)
    assert report["macro_f1"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(("gold", "predicted"), [([], []), (["a"], []), (["a", "b"], ["a"])])
def test_empty_or_mismatched_input_is_an_error(gold: list[str], predicted: list[str]) -> None:
    with pytest.raises(ValueError, match="one prediction per gold label"):
        classification_report(gold, predicted)


def test_document_text_joins_a_petitions_title_and_body() -> None:
    assert document_text({"title": " 유기견 보호 ", "text": "지원을 늘려 주세요 "}) == "유기견 보호\n지원을 늘려 주세요"
    assert document_text({"text": "코스피 급락"}) == "코스피 급락"
    assert document_text({"title": None, "text": "코스피 급락"}) == "코스피 급락"


def test_read_labelled(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "코스피 급락", "label": "경제"}\n\n'
                    '{"title": "청원", "text": "본문", "label": "행정"}\n', encoding="utf-8")
    assert read_labelled(path) == [LabelledText("코스피 급락", "경제"), LabelledText("청원\n본문", "행정")]


@pytest.mark.parametrize(("content", "message"), [
    ('{"text": "코스피 급락", "label": "경제"}\n{"text": "label 없음"}\n', r"data\.jsonl:2: record without a 'label'"),
    ('{"text": "", "label": "경제"}\n', r"data\.jsonl:1: record without 'text'"),
    ('not json\n', r"data\.jsonl:1: not JSON"),
    ('\n\n', "no records"),
])
def test_read_labelled_names_the_bad_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_labelled(path)
