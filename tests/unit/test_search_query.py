"""Search query building: validation, terms, escaping, cursors, SQL assembly."""
from __future__ import annotations

import base64
import json

import pytest

from services.search import query
from services.search.query import QueryError, SearchParams


def _params(q: str | None = "예산", tags: tuple[str, ...] = (), limit: int = 20, offset: int = 0) -> SearchParams:
    return SearchParams(q=q, tags=tags, limit=limit, offset=offset)


# ------------------------------------------------------------------ validation

def test_validate_normalises_query_and_tags() -> None:
    p = query.validate("  예산 증액 ", ["정치", " 정치", "경제"], None, None)
    assert p == SearchParams(q="예산 증액", tags=("정치", "경제"), limit=query.DEFAULT_LIMIT, offset=0)


@pytest.mark.parametrize("q,tags", [(None, []), ("", []), ("   \t", None)])
def test_validate_needs_query_or_tag(q: str | None, tags: list[str] | None) -> None:
    with pytest.raises(QueryError) as err:
        query.validate(q, tags, 20, None)
    assert err.value.field == "q"


def test_validate_tag_only_is_fine() -> None:
    assert query.validate(None, ["경제"], 5, None) == SearchParams(q=None, tags=("경제",), limit=5, offset=0)


def test_validate_query_length() -> None:
    assert query.validate("가" * 500, [], 20, None).q == "가" * 500
    with pytest.raises(QueryError) as err:
        query.validate("가" * 501, [], 20, None)
    assert err.value.field == "q"


@pytest.mark.parametrize("limit", [0, -1, 101, 10_000, True])
def test_validate_limit_range(limit: int) -> None:
    with pytest.raises(QueryError) as err:
        query.validate("예산", [], limit, None)
    assert err.value.field == "limit"


@pytest.mark.parametrize("tags", [[""], ["  "], ["x" * 101], [f"t{i}" for i in range(21)]])
def test_validate_bad_tags(tags: list[str]) -> None:
    with pytest.raises(QueryError) as err:
        query.validate("예산", tags, 20, None)
    assert err.value.field == "tag"


def test_validate_rejects_nul() -> None:
    with pytest.raises(QueryError) as err:
        query.validate("예산\x00", [], 20, None)
    assert err.value.field == "q"


# ------------------------------------------------------------------ terms and escaping

def test_terms_are_deduplicated_lowercased_and_anded_by_plain_words() -> None:
    assert query.clean_terms(["예산", "AI", "예산", "ai", "늘리다"]) == ["예산", "ai", "늘리다"]
    assert query.tsquery_text(["예산", "늘리다"]) == "예산 늘리다"


@pytest.mark.parametrize("hostile", [
    "a' | b", "x:*", "a & !b", "(a|b)", "a <-> b", "a<2>b", "'; DROP TABLE documents.documents; --", "a\\'b", '"q"',
])
def test_tsquery_text_has_no_tsquery_syntax(hostile: str) -> None:
    text = query.tsquery_text([hostile, "예산"])
    for ch in "&|!:()<>*'\"\\":
        assert ch not in text
    assert text.endswith("예산")


def test_tsquery_text_empty_when_only_syntax() -> None:
    assert query.tsquery_text(["&|!", ":*", "''"]) == ""


@pytest.mark.parametrize("raw,escaped", [
    ("100%", "100\\%"),
    ("a_b", "a\\_b"),
    ("c:\\dir", "c:\\\\dir"),
    ("디지털%_\\", "디지털\\%\\_\\\\"),
    ("it's", "it's"),  # quotes are harmless: the pattern is a bound parameter
])
def test_escape_like(raw: str, escaped: str) -> None:
    assert query.escape_like(raw) == escaped
    assert query.contains_pattern(raw) == f"%{escaped}%"


# ------------------------------------------------------------------ SQL assembly

HOSTILE = "예산' OR 1=1 -- %_ & | ! :* \\"


def test_plan_never_contains_user_input() -> None:
    plan = query.build_plan(_params(q=HOSTILE, tags=("x' OR '1'='1",)), ["예산", "1"], ["예산"])
    sql_texts = [plan.where, plan.score, query.page_sql(plan), query.count_sql(plan), query.facets_sql(plan)]
    for text in sql_texts:
        assert "OR 1=1" not in text
        assert "'1'='1" not in text
        assert "예산" not in text
    assert plan.params["pattern"] == "%" + query.escape_like(HOSTILE) + "%"
    assert plan.params["tags"] == ["x' OR '1'='1"]
    assert plan.params["tsq"] == "예산 1"


def test_plan_full_text_and_substring() -> None:
    plan = query.build_plan(_params(q="예산을"), ["예산"], ["예산"])
    assert "plainto_tsquery('simple', %(tsq)s)" in plan.where
    assert "ILIKE %(pattern)s" in plan.where
    assert " OR " in plan.where
    assert plan.params["tsq"] == "예산"
    assert plan.params["pattern"] == "%예산을%"
    assert "%예산%" in plan.params["title_patterns"]
    assert "tags" not in plan.params


def test_plan_single_character_query_has_no_substring_match() -> None:
    plan = query.build_plan(_params(q="법"), ["법"], ["법"])
    assert "pattern" not in plan.params
    assert "%(tsq)s" in plan.where


def test_plan_query_without_terms_or_substring_matches_nothing() -> None:
    plan = query.build_plan(_params(q="!"), [], [])
    assert plan.where == "false"


def test_plan_substring_only_when_no_terms() -> None:
    plan = query.build_plan(_params(q="%%"), [], [])
    assert "tsq" not in plan.params
    assert plan.params["pattern"] == "%\\%\\%%"


def test_plan_tags_only_ranks_by_tag_score() -> None:
    plan = query.build_plan(_params(q=None, tags=("정치", "경제")), [], [])
    assert plan.params["tags"] == ["정치", "경제"]
    assert plan.params["tag_count"] == 2
    assert "HAVING count(DISTINCT t.tag) = %(tag_count)s" in plan.where
    assert "max(t.score)" in plan.score
    assert "tsq" not in plan.params and "pattern" not in plan.params


def test_plan_query_and_tags_combined_with_and() -> None:
    plan = query.build_plan(_params(q="예산", tags=("정치",)), ["예산"], ["예산"])
    assert plan.where.startswith("(") and ") AND d.id IN (" in plan.where


def test_fts_matches_score_above_substring_only() -> None:
    # The best substring-only score (title boost + substring) stays below the lowest full-text score.
    assert query.TITLE_BOOST + query.SUBSTRING_ONLY < query.FTS_BASE


# ------------------------------------------------------------------ cursors

def test_cursor_round_trip() -> None:
    cursor = query.encode_cursor(40, "예산", ["정치", "경제"])
    assert "=" not in cursor and "+" not in cursor and "/" not in cursor
    assert query.decode_cursor(cursor, "예산", ["경제", "정치"]) == 40
    assert query.validate(" 예산 ", ["경제", "정치"], 20, cursor).offset == 40


def test_cursor_bound_to_query() -> None:
    cursor = query.encode_cursor(20, "예산", [])
    with pytest.raises(QueryError) as err:
        query.decode_cursor(cursor, "복지", [])
    assert err.value.field == "cursor"
    with pytest.raises(QueryError):
        query.decode_cursor(cursor, "예산", ["정치"])


def _raw_cursor(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    "not base64!!",
    "%%%",
    base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    _raw_cursor([1, 2]),
    _raw_cursor({"o": -1, "h": query.query_hash("예산", [])}),
    _raw_cursor({"o": "10", "h": query.query_hash("예산", [])}),
    _raw_cursor({"o": True, "h": query.query_hash("예산", [])}),
    _raw_cursor({"o": 10}),
    _raw_cursor({"o": 10, "h": query.query_hash("예산", []), "x": 1}),
    _raw_cursor({"o": 10, "h": "0" * 16}),
    "A" * 600,
])
def test_cursor_tampered_or_malformed(cursor: str) -> None:
    with pytest.raises(QueryError) as err:
        query.validate("예산", [], 20, cursor)
    assert err.value.field == "cursor"


def test_cursor_offset_edit_is_only_a_different_offset() -> None:
    # The offset is not secret: editing it is the same as paging; the query binding still holds.
    cursor = _raw_cursor({"o": 7, "h": query.query_hash("예산", [])})
    assert query.decode_cursor(cursor, "예산", []) == 7
