"""Search query semantics as pure logic: validation, full-text terms, LIKE patterns,
cursors, and the SQL that combines them.

No user input is ever put into SQL text. The SQL is assembled only from the fixed
fragments below (which ones depends on whether there are terms, a substring and
tags); every value travels as a bound parameter. The full-text part goes through
`plainto_tsquery('simple', ...)`, which treats its input as plain words (tsquery
operators have no meaning there), and the terms are stripped of tsquery syntax
characters before that as a second line of defence. Using the same 'simple'
parser on the same analyser output as the indexed `search_vector` gives identical
lexemes on both sides.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_QUERY_CHARS = 500
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# A raw query this long or longer is also matched as a substring (parts of compound words).
MIN_SUBSTRING_CHARS = 2
MAX_TAGS = 20
MAX_TAG_CHARS = 100
MAX_CURSOR_CHARS = 512
FACET_LIMIT = 50

# Scores: a full-text match always ranks above a substring-only match.
FTS_BASE = 1.0
TITLE_BOOST = 0.5
SUBSTRING_ONLY = 0.2

# Characters with a meaning in tsquery syntax (and quotes/backslash), removed from terms.
_TSQUERY_SYNTAX = re.compile(r"[&|!:()<>*'\"\\\s\x00-\x1f]+")


class QueryError(ValueError):
    """A request parameter is invalid; `field` names it (q, tag, limit, cursor)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class SearchParams:
    """A validated search request."""

    q: str | None
    tags: tuple[str, ...]
    limit: int
    offset: int


def validate(q: str | None, tags: Iterable[str] | None, limit: int | None, cursor: str | None) -> SearchParams:
    """Checks and normalises the request parameters; raises QueryError naming the field."""
    text = (q or "").strip()
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError("q", f"q must be at most {MAX_QUERY_CHARS} characters")
    if "\x00" in text:
        raise QueryError("q", "q must not contain NUL characters")
    clean_tags: list[str] = []
    for raw in tags or ():
        tag = raw.strip()
        if not tag:
            raise QueryError("tag", "tag must not be empty")
        if len(tag) > MAX_TAG_CHARS or "\x00" in tag:
            raise QueryError("tag", f"tag must be at most {MAX_TAG_CHARS} characters of text")
        if tag not in clean_tags:
            clean_tags.append(tag)
    if len(clean_tags) > MAX_TAGS:
        raise QueryError("tag", f"at most {MAX_TAGS} tags may be given")
    if not text and not clean_tags:
        raise QueryError("q", "give a query q, one or more tag filters, or both")
    if limit is None:
        limit = DEFAULT_LIMIT
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise QueryError("limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
    normalized_q = text or None
    offset = decode_cursor(cursor, normalized_q, clean_tags) if cursor else 0
    return SearchParams(q=normalized_q, tags=tuple(clean_tags), limit=limit, offset=offset)


# ------------------------------------------------------------------ terms and patterns

def clean_terms(terms: Iterable[str]) -> list[str]:
    """Lower-cased terms without tsquery syntax characters, de-duplicated, in order."""
    out: list[str] = []
    for term in terms:
        for piece in _TSQUERY_SYNTAX.split(term.lower()):
            if piece and piece not in out:
                out.append(piece)
    return out


def tsquery_text(terms: Iterable[str]) -> str:
    """The text for `plainto_tsquery('simple', %s)`: the terms, space-joined (AND)."""
    return " ".join(clean_terms(terms))


def escape_like(text: str) -> str:
    """Escapes LIKE wildcards (`%`, `_`) and the escape character itself (backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def contains_pattern(text: str) -> str:
    """An ILIKE pattern (ESCAPE '\\') matching `text` anywhere."""
    return f"%{escape_like(text)}%"


# ------------------------------------------------------------------ cursors

def query_hash(q: str | None, tags: Sequence[str]) -> str:
    """Identifies the query a cursor belongs to (the order of tags does not matter)."""
    canonical = json.dumps({"q": q or "", "tags": sorted(set(tags))}, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def encode_cursor(offset: int, q: str | None, tags: Sequence[str]) -> str:
    payload = json.dumps({"o": offset, "h": query_hash(q, tags)}, separators=(",", ":")).encode("ascii")
    return base64.urlsafe_b64encode(payload).decode("ascii").rstrip("=")


def decode_cursor(cursor: str, q: str | None, tags: Sequence[str]) -> int:
    """The offset in `cursor`; QueryError(field="cursor") when malformed or made for another query."""
    if len(cursor) > MAX_CURSOR_CHARS:
        raise QueryError("cursor", "the cursor is not valid")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw.decode("ascii"))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise QueryError("cursor", "the cursor is not valid") from None
    if not isinstance(data, dict) or set(data) != {"o", "h"}:
        raise QueryError("cursor", "the cursor is not valid")
    offset, digest = data["o"], data["h"]
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise QueryError("cursor", "the cursor is not valid")
    if digest != query_hash(q, tags):
        raise QueryError("cursor", "the cursor belongs to a different query")
    return offset


# ------------------------------------------------------------------ SQL

_FTS = "d.search_vector @@ plainto_tsquery('simple', %(tsq)s)"
_FTS_RANK = "ts_rank_cd(d.search_vector, plainto_tsquery('simple', %(tsq)s), 32)"
_SUBSTRING = "(d.title ILIKE %(pattern)s ESCAPE '\\' OR d.text_content ILIKE %(pattern)s ESCAPE '\\')"
# LIKE ... ANY takes no ESCAPE clause; backslash is LIKE's default escape character anyway.
_TITLE_HIT = "d.title ILIKE ANY(%(title_patterns)s)"
_TAG_FILTER = (
    "d.id IN (SELECT t.document_id FROM documents.document_tags t WHERE t.tag = ANY(%(tags)s) "
    "GROUP BY t.document_id HAVING count(DISTINCT t.tag) = %(tag_count)s)"
)
# Without a text query, rank by the model's confidence in the requested tags.
_TAG_SCORE = (
    "coalesce((SELECT avg(s.best) FROM (SELECT max(t.score) AS best FROM documents.document_tags t "
    "WHERE t.document_id = d.id AND t.tag = ANY(%(tags)s) GROUP BY t.tag) s), 0)"
)


@dataclass(frozen=True)
class SqlPlan:
    """WHERE condition and score expression over `documents.documents d`, with their parameters."""

    where: str
    score: str
    params: dict[str, Any] = field(default_factory=dict)


def build_plan(params: SearchParams, terms: Sequence[str], surfaces: Sequence[str] = ()) -> SqlPlan:
    """Combines full text (AND of the analysed terms), substring and tag filters.

    `terms` are the query's morphemes (`services.common.korean.analyze`); `surfaces`
    are spellings of them as written in the query, used for the title boost.
    """
    values: dict[str, Any] = {}
    match: list[str] = []
    score = "0"
    if params.q is not None:
        tsq = tsquery_text(terms)
        has_fts = bool(tsq)
        has_sub = len(params.q) >= MIN_SUBSTRING_CHARS
        if has_fts:
            values["tsq"] = tsq
            match.append(_FTS)
        if has_sub:
            values["pattern"] = contains_pattern(params.q)
            match.append(_SUBSTRING)
        title_words = [params.q, *surfaces, *clean_terms(terms)]
        values["title_patterns"] = _unique(contains_pattern(w) for w in title_words if w.strip())
        parts = [f"CASE WHEN {_TITLE_HIT} THEN {TITLE_BOOST} ELSE 0 END"]
        if has_fts:
            parts.append(f"CASE WHEN {_FTS} THEN {FTS_BASE} + {_FTS_RANK} ELSE 0 END")
        if has_sub:
            not_fts = f"NOT ({_FTS}) AND " if has_fts else ""
            parts.append(f"CASE WHEN {not_fts}{_SUBSTRING} THEN {SUBSTRING_ONLY} ELSE 0 END")
        score = " + ".join(parts)
    conditions: list[str] = []
    if params.q is not None:
        # A query with nothing searchable in it (e.g. a lone particle) matches nothing.
        conditions.append("(" + " OR ".join(match) + ")" if match else "false")
    if params.tags:
        values["tags"] = list(params.tags)
        values["tag_count"] = len(params.tags)
        conditions.append(_TAG_FILTER)
        if params.q is None:
            score = _TAG_SCORE
    return SqlPlan(where=" AND ".join(conditions), score=f"({score})::float8", params=values)


def page_sql(plan: SqlPlan) -> str:
    """One page of hits (`limit` + 1 rows, so the caller knows whether another page follows)."""
    return (
        f"SELECT d.id, d.title, d.status, d.created_at, left(d.text_content, %(text_chars)s) AS text_head, "
        f"{plan.score} AS score FROM documents.documents d WHERE {plan.where} "
        "ORDER BY score DESC, d.created_at DESC, d.id DESC LIMIT %(fetch)s OFFSET %(offset)s"
    )


def count_sql(plan: SqlPlan) -> str:
    return f"SELECT count(*) AS total FROM documents.documents d WHERE {plan.where}"


def facets_sql(plan: SqlPlan) -> str:
    """Tag counts over every matching document (not just the page)."""
    return (
        "SELECT t.tag, count(DISTINCT t.document_id) AS count FROM documents.document_tags t "
        f"JOIN documents.documents d ON d.id = t.document_id WHERE {plan.where} "
        "GROUP BY t.tag ORDER BY count DESC, t.tag LIMIT %(facet_limit)s"
    )


HIT_TAGS_SQL = (
    "SELECT document_id, tag, max(score) AS score FROM documents.document_tags "
    "WHERE document_id = ANY(%(ids)s) GROUP BY document_id, tag ORDER BY document_id, score DESC, tag"
)


def _unique(items: Iterable[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out
