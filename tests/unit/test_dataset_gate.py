"""The data quality gate: each rule, and masking of each kind of personal data before anything is kept."""
from __future__ import annotations

import json

import pytest

from services.model_serving.datasets.gate import (
    GateSettings,
    Record,
    SchemaError,
    near_duplicates,
    parse_records,
    run_gate,
    text_key,
)

LABELS = frozenset({"경제", "정치", "사회"})
SETTINGS = GateSettings(min_rows=3, min_per_label=2)


def _rows(*items: tuple[str, str]) -> list[Record]:
    return [Record(i, text, label) for i, (text, label) in enumerate(items, 1)]


def _gate(records: list[Record], **kw: object) -> object:
    return run_gate(records, SETTINGS, label_set=kw.get("label_set", LABELS),  # type: ignore[arg-type]
                    eval_keys=kw.get("eval_keys", frozenset()), eval_set=None)  # type: ignore[arg-type]


BASE = [("한국은행 기준금리 동결 결정", "경제"), ("국회 본회의 예산안 통과", "정치"),
        ("지하철 파업 출근길 혼잡", "사회"), ("수출 증가세 이어져 무역흑자", "경제"),
        ("대통령 외교 순방 일정 발표", "정치"), ("폭우로 도로 통제 잇따라", "사회")]


def test_jsonl_and_csv_parse_and_a_bad_record_names_its_row_and_field() -> None:
    data = "\n".join(json.dumps({"text": t, "label": lab}, ensure_ascii=False) for t, lab in BASE[:2]).encode()
    assert [r.label for r in parse_records(data, "jsonl")] == ["경제", "정치"]
    csv_data = "text,label,title\n금리 인상,경제,제목\n".encode()
    assert parse_records(csv_data, "csv")[0] == Record(2, "금리 인상", "경제", "제목")
    bad = (data + b'\n{"text": "label \xec\x97\x86\xec\x9d\x8c"}\n')
    with pytest.raises(SchemaError) as caught:
        parse_records(bad, "jsonl")
    assert (caught.value.row, caught.value.field) == (3, "label")
    with pytest.raises(SchemaError) as caught:
        parse_records(b'{"text": 5, "label": "x"}', "jsonl")
    assert (caught.value.row, caught.value.field) == (1, "text")
    with pytest.raises(SchemaError) as caught:
        parse_records(b"body,label\nx,y\n", "csv")
    assert caught.value.field == "text"
    with pytest.raises(SchemaError):
        parse_records(b"not json\n", "jsonl")


@pytest.mark.parametrize(("raw", "value", "masked_part", "kind"), [
    ("주민등록번호 900101-1234568 입니다", "900101-1234568", "900101-1******", "rrn"),
    ("연락처 010-1234-5678 으로", "010-1234-5678", "010-****-5678", "mobile"),
    ("메일 kim.minsu@example.go.kr 로", "kim.minsu@", "k***@example.go.kr", "email"),
    ("신한은행 계좌 110-123-456789 로 입금", "110-123-456789", "110-***-******", "bank_account"),
    ("카드 4111-1111-1111-1111 결제", "4111-1111-1111-1111", "4111-****-****-1111", "card"),
])
def test_each_kind_of_personal_data_is_masked_before_it_is_kept(raw: str, value: str, masked_part: str,
                                                                kind: str) -> None:
    records = [*_rows(*BASE), Record(99, raw + " 관련 민원", "사회", title="제목 " + raw)]
    result = _gate(records)
    kept = next(r for r in result.rows if r.row == 99)  # type: ignore[attr-defined]
    assert masked_part in kept.text and masked_part in (kept.title or "")
    assert value not in kept.text and value not in (kept.title or "")
    assert result.report["pii_masked"][kind] == 2  # type: ignore[attr-defined]
    assert value not in json.dumps(result.report, ensure_ascii=False)  # type: ignore[attr-defined]


def test_empty_too_long_unknown_label_duplicates_conflicts_and_leakage_are_dropped_and_reported() -> None:
    long_text = "가" * 300
    records = _rows(*BASE, ("   ", "경제"), (long_text, "경제"), ("새 정당 창당 선언", "스포츠"),
                    ("한국은행  기준금리 동결 결정", "경제"),          # exact duplicate (whitespace differs)
                    ("같은 문장 두 라벨", "경제"), ("같은 문장 두 라벨", "정치"),  # conflict
                    ("평가셋에 있는 문장입니다", "사회"))
    result = run_gate(records, GateSettings(min_rows=3, max_chars=200), label_set=LABELS,
                      eval_keys=frozenset({text_key("평가셋에  있는 문장입니다")}), eval_set={"task": "t"})
    dropped = {k: v["rows"] for k, v in result.report["dropped"].items()}
    assert dropped == {"empty_text": [7], "too_long": [8], "unknown_label": [9], "exact_duplicate": [10],
                       "conflicting_labels": [11, 12], "in_evaluation_set": [13]}
    assert [r.row for r in result.rows] == [1, 2, 3, 4, 5, 6]
    assert result.stats["rows"] == 6 and result.stats["labels"] == {"경제": 2, "사회": 2, "정치": 2}
    assert set(result.stats["length_chars"]) == {"min", "p50", "p90", "p99", "max", "mean"}
    assert not result.blocked


def test_near_duplicates_are_found_and_different_texts_are_not() -> None:
    a = "서울시는 내년부터 대중교통 요금을 인상하기로 결정했다고 밝혔다. 시민들의 반응은 엇갈렸다."
    b = a.replace("밝혔다.", "밝혔다!")
    c = "프로야구 개막전에서 홈팀이 연장 접전 끝에 승리했다"
    assert near_duplicates([a, c, b], 0.8) == {2: 0}
    result = run_gate(_rows(*BASE, (b, "경제"), (a, "경제")), GateSettings(min_rows=3, near_threshold=0.8),
                      label_set=LABELS, eval_keys=frozenset(), eval_set=None)
    assert result.report["dropped"]["near_duplicate"]["rows"] == [8]


def test_class_balance_warnings_and_blocking() -> None:
    skewed = _rows(*[(f"경제 기사 번호 {i} 내용이 서로 다름 {i * 7}", "경제") for i in range(30)],
                   ("정치 기사", "정치"))
    result = run_gate(skewed, GateSettings(min_rows=3, min_per_label=2, imbalance_warning=10),
                      label_set=LABELS, eval_keys=frozenset(), eval_set=None)
    assert result.report["class_balance"]["largest_to_smallest"] == 30.0
    assert any("imbalance" in w for w in result.report["warnings"])
    assert any("정치" in w for w in result.report["warnings"])
    assert not result.blocked
    one_label = run_gate(_rows(("a 문장", "경제"), ("b 문장", "경제"), ("c 문장", "경제")), SETTINGS,
                         label_set=LABELS, eval_keys=frozenset(), eval_set=None)
    assert one_label.blocked and "fewer than two labels" in one_label.report["blocking"][0]


def test_the_version_address_depends_on_content_only() -> None:
    first = _gate(_rows(*BASE))
    again = _gate(_rows(*BASE))
    other = _gate(_rows(*BASE[:-1], ("다른 문장", "사회")))
    assert first.content_sha256 == again.content_sha256 != other.content_sha256  # type: ignore[attr-defined]


def test_a_negative_row_drops_the_positive_it_contradicts_and_never_counts_as_a_row() -> None:
    """A removed model tag ("this text is NOT 경제") beside a person's positive row of the same text
    and label: the positive is dropped; other labels of that text and other texts stay."""
    records = [*_rows(*BASE),
               Record(7, BASE[0][0], "경제", negative=True),       # contradicts row 1
               Record(8, BASE[1][0], "경제", negative=True),       # a different label: no conflict
               Record(9, BASE[1][0], "경제", negative=True),       # the same negative again
               Record(10, "새로운 문장 하나", "스포츠", negative=True)]  # outside the label set
    result = run_gate(records, SETTINGS, label_set=LABELS, eval_keys=frozenset(), eval_set=None)
    dropped = {k: v["rows"] for k, v in result.report["dropped"].items()}
    assert dropped == {"contradicted_by_negative": [1], "exact_duplicate": [9], "unknown_label": [10]}
    assert [(r.row, r.negative) for r in result.rows] == [(2, False), (3, False), (4, False), (5, False),
                                                          (6, False), (7, True), (8, True)]
    assert result.stats["rows"] == 5 and result.stats["labels"] == {"경제": 1, "사회": 2, "정치": 2}
    assert result.stats["negatives"] == {"경제": 2}
    assert result.report["rows_kept"] == 5 and result.report["negative_rows_kept"] == 2


def test_negatives_alone_do_not_make_a_trainable_version_and_change_the_address() -> None:
    only_negatives = [Record(i, t, lab, negative=True) for i, (t, lab) in enumerate(BASE, 1)]
    blocked = run_gate(only_negatives, SETTINGS, label_set=LABELS, eval_keys=frozenset(), eval_set=None)
    assert blocked.blocked and blocked.stats["rows"] == 0
    positives = run_gate(_rows(*BASE), SETTINGS, label_set=LABELS, eval_keys=frozenset(), eval_set=None)
    with_negative = run_gate([*_rows(*BASE), Record(7, "다른 문장", "정치", negative=True)], SETTINGS,
                             label_set=LABELS, eval_keys=frozenset(), eval_set=None)
    assert positives.content_sha256 != with_negative.content_sha256


def test_the_negative_field_is_read_from_jsonl_and_csv_and_checked() -> None:
    data = (json.dumps({"text": "금리", "label": "경제", "negative": True}, ensure_ascii=False) + "\n"
            + json.dumps({"text": "예산", "label": "정치"}, ensure_ascii=False)).encode()
    assert [r.negative for r in parse_records(data, "jsonl")] == [True, False]
    csv_data = "text,label,negative\n금리,경제,true\n예산,정치,\n".encode()
    assert [r.negative for r in parse_records(csv_data, "csv")] == [True, False]
    with pytest.raises(SchemaError) as bad:
        parse_records(json.dumps({"text": "금리", "label": "경제", "negative": "아마"}).encode(), "jsonl")
    assert bad.value.field == "negative" and bad.value.row == 1
