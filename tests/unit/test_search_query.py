"""Search query building: validation, terms, escaping, cursors, SQL assembly."""
from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from services.common.context import tenant_id_var
from services.search import query
from services.search.query import QueryError, SearchParams


def _params(q: str | None = "예산", tags: tuple[str, ...] = (), limit: int = 20, offset: int = 0,
            **filters: Any) -> SearchParams:
    return SearchParams(q=q, tags=tags, limit=limit, offset=offset, **filters)


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


# ------------------------------------------------------------------ operators and escaping

def test_operators_are_split_out() -> None:
    parts = query.parse_operators('예산  "교통 안전   대책" -복지 OR W-2 -')
    assert parts.words == ("예산", "W-2", "-")
    assert parts.phrases == ("교통 안전 대책",)
    assert parts.excluded == ("복지",)


def test_unbalanced_quote_and_empty_phrase_are_plain() -> None:
    assert query.parse_operators('"예산').words == ('"예산',)
    assert query.parse_operators('"" 예산') == query.QueryParts(("예산",), (), ())


def test_phrase_regex_is_literal_with_flexible_spaces() -> None:
    assert query.phrase_regex("예산 증액") == r"예산\s+증액"
    # Every regex operator is escaped: only \s+ remains as syntax.
    assert query.phrase_regex("a.b* (c)|[d]") == r"a\.b\*\s+\(c\)\|\[d\]"


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


def test_fallback_patterns_only_for_hangul_terms() -> None:
    # `tax` must not find "taxonomy"; 디지 may find 디지털.
    assert query.fallback_patterns(["tax", "w2", "디지", "법", "100%"]) == ["%디지%"]


def test_only_terms_the_index_does_not_know_are_searched_inside_words() -> None:
    from services.search.engine import unknown_terms
    figures = [{"term": "전하", "df": 812.0, "postings": 900.0, "counted": False},
               {"term": "갱싱", "df": 0.0, "postings": 0.0, "counted": True},
               {"term": "정부혁", "df": 0, "postings": 0, "counted": True}]
    assert unknown_terms(figures) == ["갱싱", "정부혁"]
    assert unknown_terms(None) == [] and unknown_terms([]) == []


# ------------------------------------------------------------------ SQL assembly

HOSTILE = "예산' OR 1=1 -- %_ & | ! :* \\"


def test_plan_never_contains_user_input() -> None:
    plan = query.build_plan(_params(q=HOSTILE, tags=("x' OR '1'='1",)), ["예산", "1=1"], ["--"], ["예산' OR"])
    for text in (plan.sql, plan.fallback_sql or ""):
        assert "OR 1=1" not in text and "'1'='1" not in text and "예산" not in text
    assert plan.params["terms"] == ["예산", "1=1"]
    assert plan.params["excluded"] == ["--"]
    assert plan.params["phrases"] == [query.phrase_regex("예산' OR")]
    assert plan.params["tags"] == ["x' OR '1'='1"]


def test_plan_ranks_any_term_by_bm25() -> None:
    plan = query.build_plan(_params(q="예산 교통"), ["예산", "교통"])
    assert "p.term = ANY(%(terms)s)" in plan.sql and "ln(1 + (st.n - df.df + 0.5)" in plan.sql
    assert plan.params["terms"] == ["예산", "교통"]
    assert (plan.params["k1"], plan.params["b"]) == (query.K1, query.B)
    assert "excluded" not in plan.params and "phrases" not in plan.params and "tags" not in plan.params
    # Partial words are a fallback for Hangul terms only, run when nothing matched.
    assert plan.fallback_sql is not None and plan.params["patterns"] == ["%예산%", "%교통%"]


def test_excluded_terms_leave_the_ranking() -> None:
    plan = query.build_plan(_params(q="예산 -복지"), ["예산", "복지"], ["복지"])
    assert plan.params["terms"] == ["예산"] and plan.params["excluded"] == ["복지"]
    assert "x.term = ANY(%(excluded)s)" in plan.sql


def test_query_without_terms_matches_nothing() -> None:
    plan = query.build_plan(_params(q="무엇"), [])
    assert "WHERE false)" in plan.sql
    assert plan.fallback_sql is None


def test_phrase_query_has_no_substring_fallback() -> None:
    plan = query.build_plan(_params(q='"예산 증액"'), ["예산", "증액"], [], ["예산 증액"])
    assert plan.fallback_sql is None and "~* ph.re" in plan.sql


def test_plan_tags_only_ranks_by_tag_score() -> None:
    plan = query.build_plan(_params(q=None, tags=("정치", "경제")))
    assert plan.params["tags"] == ["정치", "경제"]
    assert plan.params["tag_count"] == 2
    assert "HAVING count(*) = %(tag_count)s" in plan.sql
    assert "avg(b.best)" in plan.sql and "max(t.score)" in plan.sql
    assert "terms" not in plan.params and plan.fallback_sql is None
    # One tag: its rows read best first, only as many as the page and the facets need.
    one = query.build_plan(_params(q=None, tags=("정치",), offset=300))
    assert "ORDER BY t.score DESC, d.created_at DESC, t.document_id DESC LIMIT %(browse_rows)s" in one.sql
    assert one.params["tag"] == "정치" and one.params["browse_rows"] == 300 + 20 + 1
    assert query.build_plan(_params(q=None, tags=("정치",))).params["browse_rows"] == query.FACET_CANDIDATES
    # By date: newest first from the documents, the tags' confidence looked up for the rows read.
    by_date = query.build_plan(_params(q=None, tags=("정치",), sort="date"))
    assert "ORDER BY d.created_at DESC, d.id DESC LIMIT %(browse_rows)s" in by_date.sql
    assert "avg(s.best)" in by_date.sql


def test_page_total_and_facets_come_from_one_statement() -> None:
    plan = query.build_plan(_params(q="예산", tags=("정치",)), ["예산"])
    assert plan.sql.count("SELECT (SELECT count(*) FROM candidates) AS total") == 1
    assert "facets AS (" in plan.sql and "LIMIT %(fetch)s OFFSET %(offset)s" in plan.sql
    # A ranked search checks the tags of its (bounded) candidates; filters alone collect the tagged documents.
    assert "WHERE t.document_id = d.id AND t.tag = ANY(%(tags)s)) = %(tag_count)s" in plan.sql
    assert "d.id IN (SELECT t.document_id" not in plan.sql
    # A tag with another filter: the page and the total come from one pass over the documents passing both.
    tags_only = query.build_plan(_params(q=None, tags=("정치",), pii=True))
    assert "AND t.tag = %(tag)s AND true AND d.pii <> '{}'::jsonb GROUP BY t.document_id" in tags_only.sql
    assert "SELECT (SELECT count(*) FROM matches) AS total" in tags_only.sql


def test_ranked_plan_reads_each_terms_best_postings_and_reuses_known_frequencies() -> None:
    known = {"예산": query.TermFigures(df=40, postings=55, n_at=1000)}
    plan = query.build_plan(_params(q="예산 복지"), ["예산", "복지"], figures=known, per_term=100)
    assert "ORDER BY p.impact DESC LIMIT %(per_term)s" in plan.sql
    assert plan.params["per_term"] == 100
    assert plan.params["terms"] == ["예산", "복지"]
    assert plan.params["dfs"] == [40, None] and plan.params["n_at"] == [1000, None]
    assert query.build_plan(_params(q="예산"), ["예산"], per_term=None).params["per_term"] is None


# ------------------------------------------------------------------ cursors

def test_cursor_round_trip() -> None:
    cursor = query.encode_cursor(40, "예산", ["정치", "경제"])
    assert "=" not in cursor and "+" not in cursor and "/" not in cursor and "&" not in cursor
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


def _resigned(data: object, q: str = "예산") -> str:
    """A cursor with a valid-looking MAC taken from a real one: the MAC does not cover `data`."""
    mac = query.encode_cursor(10, q, []).split(".")[1]
    return f"{_raw_cursor(data)}.{mac}"


@pytest.mark.parametrize("cursor", [
    "not base64!!",
    "%%%",
    base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    _raw_cursor({"o": 10, "h": query.query_hash("예산", [])}),  # the old unsigned form
    _resigned([1, 2]),
    _resigned({"o": -1}),
    _resigned({"o": 2**63}),  # formerly "bigint out of range" (500)
    _resigned({"o": 11}),  # an edited offset
    "[" * 300 + "]" * 300,
    "A" * 600,
])
def test_cursor_tampered_or_malformed(cursor: str) -> None:
    with pytest.raises(QueryError) as err:
        query.validate("예산", [], 20, cursor)
    assert err.value.field == "cursor"


def test_cursor_bound_to_tenant() -> None:
    token = tenant_id_var.set("11111111-1111-4111-8111-111111111111")
    try:
        cursor = query.encode_cursor(20, "예산", [])
        assert query.decode_cursor(cursor, "예산", []) == 20
    finally:
        tenant_id_var.reset(token)
    token = tenant_id_var.set("22222222-2222-4222-8222-222222222222")
    try:
        with pytest.raises(QueryError) as err:
            query.decode_cursor(cursor, "예산", [])
        assert err.value.field == "cursor"
    finally:
        tenant_id_var.reset(token)
