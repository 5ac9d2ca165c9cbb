"""Snippet extraction: position, length, ellipses, Korean-safe cuts, HTML-safe highlights."""
from __future__ import annotations

import unicodedata

from services.search import morph
from services.search.snippet import (
    ELLIPSIS,
    SNIPPET_CHARS,
    first_occurrence,
    highlight,
    literal_spans,
    make_snippet,
    safe_cut,
    window,
    word_spans,
)

LONG = (
    "행정안전부는 올해 디지털 정부혁신 추진계획을 발표했다. " * 6
    + "특히 내년도 예산을 크게 늘렸다고 밝혔으며 지방자치단체의 참여를 요청했다. "
    + "국민 누구나 쉽게 이용할 수 있는 공공서비스를 만들겠다는 계획이다. " * 6
)


def _body(snippet: str) -> str:
    return snippet.strip(ELLIPSIS)


def test_snippet_around_first_occurrence_with_ellipses() -> None:
    s = make_snippet(LONG, "추진계획", ["예산"])
    assert "예산을" in s
    assert s.startswith(ELLIPSIS) and s.endswith(ELLIPSIS)
    assert len(_body(s)) <= SNIPPET_CHARS
    assert _body(s) in " ".join(LONG.split())


def test_snippet_cuts_at_spaces_so_words_stay_whole() -> None:
    s = make_snippet(LONG, "추진계획", ["예산"])
    words = set(" ".join(LONG.split()).split())
    parts = _body(s).split()
    assert parts[0] in words and parts[-1] in words


def test_short_text_returned_whole() -> None:
    assert make_snippet("예산을 늘렸다.", "제목", ["예산"]) == "예산을 늘렸다."


def test_case_insensitive_and_leftmost_longest() -> None:
    assert first_occurrence("Open AI와 openai", ["OPENAI", "open"]) == (0, 4)
    assert first_occurrence("xx openai", ["open", "openai"]) == (3, 9)
    assert first_occurrence("예산", []) is None


def test_whitespace_collapsed_to_plain_text() -> None:
    s = make_snippet("첫 줄\n\n둘째\t줄   예산", "제목", ["예산"])
    assert s == "첫 줄 둘째 줄 예산"


def test_falls_back_to_title_then_start() -> None:
    assert make_snippet(None, "2024년 예산 보고서", ["복지"]) == "2024년 예산 보고서"
    assert make_snippet("", "예산 보고서", ["예산"]) == "예산 보고서"
    # No occurrence in the text, but one in the title: the title is the snippet.
    assert make_snippet(LONG, "복지 예산안", ["복지"]) == "복지 예산안"
    # Nothing anywhere: the start of the text.
    s = make_snippet(LONG, "제목", ["없는말"])
    assert not s.startswith(ELLIPSIS) and s.endswith(ELLIPSIS)
    assert " ".join(LONG.split()).startswith(_body(s))


def test_locator_used_for_inflected_forms() -> None:
    calls: list[str] = []

    def locate(text: str) -> tuple[int, int] | None:
        calls.append(text)
        i = text.find("늘렸")
        return (i, i + 2) if i >= 0 else None

    s = make_snippet(LONG, "제목", ["늘리다"], locate=locate)
    assert calls and "늘렸다고" in s
    # Not asked when a literal needle is found.
    calls.clear()
    make_snippet(LONG, "제목", ["예산"], locate=locate)
    assert calls == []


def test_real_morpheme_locator_finds_inflected_verb() -> None:
    text = " ".join(LONG.split())
    hits = [m for m in morph.morphemes(text) if m.term == "늘리다"]
    assert hits, "Kiwi should find the stem of 늘렸다"
    assert text[hits[0].start:hits[0].end].startswith("늘")


def test_nfd_hangul_is_never_split() -> None:
    nfd = unicodedata.normalize("NFD", LONG)
    assert len(nfd) > len(LONG)
    needle = unicodedata.normalize("NFD", "예산")
    for width in range(40, 200, 7):
        s = window(" ".join(nfd.split()), nfd.find(needle), nfd.find(needle) + len(needle), width=width)
        body = _body(s)
        # A valid cut leaves whole syllables: composing gives only complete syllables, no stray jamo.
        composed = unicodedata.normalize("NFC", body)
        assert not any(0x1100 <= ord(c) <= 0x11FF for c in composed), (width, body[:10], body[-10:])


def test_safe_cut_moves_before_vowels_and_combining_marks() -> None:
    nfd = unicodedata.normalize("NFD", "한국")  # ᄒ ᅡ ᆫ ᄀ ᅮ ᆨ
    assert [safe_cut(nfd, i) for i in range(len(nfd) + 1)] == [0, 0, 0, 3, 3, 3, 6]
    assert safe_cut("e\u0301x", 1) == 0
    assert safe_cut("abc", 99) == 3


def test_no_space_text_still_cut_to_width() -> None:
    text = "가" * 500 + "예산" + "나" * 500
    s = make_snippet(text, "제목", ["예산"])
    assert "예산" in s and s.startswith(ELLIPSIS) and s.endswith(ELLIPSIS)
    assert len(_body(s)) == SNIPPET_CHARS


# ------------------------------------------------------------------ highlights (HTML)

def _marks_for(*terms: str):  # type: ignore[no-untyped-def]
    wanted = set(terms)

    def marks(text: str) -> list[tuple[int, int]]:
        return [(m.start, m.end) for m in morph.morphemes(text) if m.term in wanted]

    return marks


def test_matched_words_are_marked_as_written() -> None:
    s = make_snippet(LONG, "제목", ["예산"], marks=_marks_for("예산"))
    assert "<mark>예산을</mark>" in s
    assert s.count("<mark>") == 1
    # An inflected verb: the word as written is marked.
    s = make_snippet("정부는 지원을 크게 늘렸다.", "제목", ["늘리다"], marks=_marks_for("늘리다"))
    assert s == "정부는 지원을 크게 <mark>늘렸다</mark>."


def test_html_in_documents_is_escaped_and_only_marks_are_markup() -> None:
    text = '<script>alert("예산")</script> 예산을 & <b>복지</b> 늘렸다'
    s = make_snippet(text, "<i>제목</i>", ["예산"], marks=_marks_for("예산"))
    assert "<script>" not in s and "<b>" not in s
    assert "&lt;script&gt;" in s and "&amp;" in s and "&lt;b&gt;" in s
    stripped = s.replace("<mark>", "").replace("</mark>", "")
    assert "<" not in stripped and ">" not in stripped
    assert "<mark>예산을</mark>" in s
    # A title with markup, used when the text has no match, is escaped too.
    s = make_snippet(None, "<i>예산</i> 요청서", ["예산"], marks=_marks_for("예산"))
    assert s == "&lt;i&gt;<mark>예산</mark>&lt;/i&gt; 요청서"


def test_without_matches_nothing_is_marked() -> None:
    s = make_snippet("교통 안전 대책", "제목", ["없는말"], marks=_marks_for("없는말"))
    assert s == "교통 안전 대책"


def test_word_spans_widen_and_merge() -> None:
    text = "(예산을) 정부혁신을"
    assert word_spans(text, [(1, 3)]) == [(1, 4)]
    assert word_spans(text, [(6, 8), (8, 10)]) == [(6, 11)]
    assert word_spans("alert(\"예산\")", [(7, 9)]) == [(7, 9)]
    assert highlight("a<b c", [(0, 3)]) == "<mark>a&lt;b</mark> c"


def test_literal_spans_mark_words_as_written_without_the_analyser() -> None:
    text = "예산을 늘렸다. 추경예산 tax taxonomy TAX 차량"
    spans = literal_spans(text, ["예산", "tax", "차"])
    assert [text[s:e] for s, e in spans] == ["예산", "tax", "TAX"]
    assert literal_spans(text, ["복지"]) == []


def test_hits_found_by_meaning_alone_are_not_analysed(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A hit the lexical half found gets the analyser (an inflected form is located and marked);
    a hit found by meaning alone gets the words as written only, and Kiwi never runs for it."""
    from datetime import UTC, datetime

    from services.search import engine

    analyzed = morph.analyze_query("예산 늘리다")
    row = {"title": "제목", "text_head": "정부는 올해 지원을 크게 늘렸다. 다른 내용.", "score": 0.5, "tags": [],
           "status": "tagged", "created_at": datetime(2026, 11, 30, tzinfo=UTC)}
    by_words, by_meaning = {**row, "id": "a"}, {**row, "id": "b"}
    hits = engine._build_hits([by_words], analyzed, frozenset({"a"}))
    assert "<mark>늘렸다</mark>" in hits[0].snippet
    calls: list[str] = []
    real = morph.morphemes
    monkeypatch.setattr(morph, "morphemes", lambda text, *a: calls.append(text) or real(text, *a))
    hits = engine._build_hits([by_meaning], analyzed, frozenset({"a"}))
    assert calls == [] and "<mark>" not in hits[0].snippet and hits[0].snippet.startswith("정부는")
    literal = {**row, "id": "c", "text_head": "내년도 예산을 늘렸다."}
    hits = engine._build_hits([literal], analyzed, frozenset({"a"}))
    assert calls == [] and "<mark>예산을</mark>" in hits[0].snippet
    # Where it is not known which hits were found by words, every hit may be analysed.
    hits = engine._build_hits([by_meaning], analyzed, None)
    assert calls and "<mark>늘렸다</mark>" in hits[0].snippet
