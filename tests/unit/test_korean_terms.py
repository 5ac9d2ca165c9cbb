"""The Korean analyser behind both the index and queries (services.common.korean)."""
from __future__ import annotations

import pytest

from services.common import korean
from services.common.korean import analyze
from services.search import morph


def test_particles_and_endings_are_not_terms() -> None:
    assert analyze("예산을") == analyze("예산이") == analyze("예산은") == ["예산"]
    assert analyze("예산을 크게 늘렸다") == ["예산", "크다", "늘리다"]


@pytest.mark.parametrize("text", ["을", "를", "이", "무엇인가요", "어디에 있나요?", "누가", "얼마", "정의는 무엇이야",
                                  "그것의 의미", "!!!", "   "])
def test_stop_words_and_lone_particles_give_no_terms(text: str) -> None:
    assert analyze(text) == []


def test_question_words_leave_only_the_content() -> None:
    assert analyze("최저임금의 정의는 무엇이야") == ["최저", "최저임금", "임금"]
    assert analyze("누가 노벨상을 받았나") == ["노벨상", "받다"]


def test_compounds_are_indexed_whole_and_by_parts() -> None:
    whole = set(analyze("운전면허"))      # Kiwi keeps this one whole; its parts come from a second look
    spaced = set(analyze("운전 면허"))
    assert {"운전", "면허", "운전면허"} <= whole
    assert spaced == {"운전", "면허"}
    # Kiwi splits this one; adjacent nouns are joined again (runs of 2..4).
    terms = set(analyze("디지털정부혁신"))
    assert {"디지털", "정부", "혁신", "디지털정부", "정부혁신", "디지털정부혁신"} <= terms
    # Nouns separated by a space are not joined.
    assert "추진계획디지털" not in analyze("추진계획 디지털")


def test_names_are_not_cut_into_syllables() -> None:
    assert analyze("손흥민") == ["손흥민"]


@pytest.mark.parametrize("a,b,term", [
    ("W-2", "W2", "w2"),
    ("401(k)", "401k", "401k"),
    ("F-35A", "F35A", "f35a"),
    ("COVID-19", "covid19", "covid19"),
])
def test_codes_are_kept_whole_and_written_variants_meet(a: str, b: str, term: str) -> None:
    assert term in analyze(a) and term in analyze(b)


def test_codes_do_not_fall_apart_into_letters() -> None:
    terms = analyze("W-2 양식과 401(k) 제도")
    assert "w" not in terms and "k" not in terms and "2" not in terms
    assert terms == ["w2", "양식", "401k", "401", "제도"]
    assert set(analyze("COVID-19")) == {"covid19", "covid", "19"}


def test_numbers_with_units() -> None:
    assert analyze("2027년 예산") == ["2027", "2027년", "예산"]
    assert "3.5" in analyze("금리 3.5% 인상")


def test_latin_words_are_whole_words_lower_cased() -> None:
    assert analyze("Tax taxonomy") == ["tax", "taxonomy"]
    assert analyze("iOS 11 증강현실")[:2] == ["ios", "11"]


def test_offsets_point_at_the_written_word() -> None:
    text = "정부는 내년도 예산을 크게 늘렸다. W-2 양식"
    spans = {m.term: text[m.start:m.end] for m in korean.morphemes(text)}
    assert spans["예산"] == "예산"
    assert spans["늘리다"].startswith("늘")
    assert spans["w2"] == "W-2"


@pytest.mark.parametrize("text", [
    "운전면허 시험은 어디서 보나요?", "2027년 W-2 양식과 401(k)", "디지털정부혁신 추진계획을 발표했다",
    "개인정보보호법 위반 과태료는 얼마", "iPhone 15 Pro 출시",
])
def test_query_terms_are_the_index_terms(text: str) -> None:
    """One analyser: what a query asks for is exactly what the same words index as."""
    assert list(morph.analyze_query(text).terms) == list(dict.fromkeys(analyze(text)))


def test_query_operators_are_analysed_like_documents() -> None:
    q = morph.analyze_query('"예산 증액" -복지 OR 교통사고')
    assert q.phrases == ("예산 증액",)
    assert q.excluded == ("복지",)
    assert set(q.terms) == {"예산", "증액", "교통", "사고", "교통사고"}
    assert "or" not in q.terms
