"""Search query semantics as pure logic: validation, operators, cursors, and the one SQL
statement that ranks, counts and facets a search.

Ranking is BM25 over the Korean analyser's terms (`services.common.korean`), the same
analyser the upload service indexes documents with, so query and document terms meet
exactly. Any query term may match (ranked OR): documents with more of the query's terms,
rarer terms (higher idf) and matches in the title rank higher. BM25F: each field's term
frequency is normalised by its length (b) and weighted (title x TITLE_WEIGHT) before the
usual saturation (k1), so a title match counts more without counting the term twice.

Operators: "exact phrase" (the title or text must contain it, whitespace-insensitive;
its words also rank), -word (no document with that word's terms), OR (accepted: every
query is OR already). Tag filters AND as before.

No user input is ever put into SQL text. The statement is assembled only from the fixed
fragments below (which ones depends on the shape of the query); every value travels as
a bound parameter.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from services.common import cursors
from services.common.context import tenant_id_var

MAX_QUERY_CHARS = 500
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# Hangul query terms this long or longer may match inside words (the partial-word fallback).
MIN_SUBSTRING_CHARS = 2
MAX_TAGS = 20
MAX_TAG_CHARS = 100
# Deepest page a cursor may point at (a signed cursor never exceeds it; this bounds the SQL OFFSET).
MAX_OFFSET = 1_000_000
FACET_LIMIT = 50
# File types a search can be limited to (`type=`): the upload formats, by file name extension.
FILE_TYPES = ("pdf", "docx", "hwp", "hwpx", "txt", "csv", "md", "html", "xml")
_TYPE_EXTENSIONS = {"html": ("html", "htm")}
SORTS = ("relevance", "date")


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
    pii: bool | None = None   # True: only documents with personal data found; False: only without
    uploaded_from: datetime | None = None   # created_at >= this (UTC)
    uploaded_to: datetime | None = None     # created_at < this (UTC)
    types: tuple[str, ...] = ()             # any of FILE_TYPES
    sort: str = "relevance"                 # or "date": newest first

    def cursor_filters(self) -> dict[str, Any]:
        """The filters besides q, tags and pii that a cursor is bound to (only those set)."""
        return _filters_key(self.uploaded_from, self.uploaded_to, self.types, self.sort)


def _filters_key(uploaded_from: datetime | None, uploaded_to: datetime | None, types: Sequence[str],
                 sort: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if uploaded_from is not None:
        out["from"] = uploaded_from.isoformat()
    if uploaded_to is not None:
        out["to"] = uploaded_to.isoformat()
    if types:
        out["types"] = sorted(types)
    if sort != "relevance":
        out["sort"] = sort
    return out


def parse_time(value: str, field: str, *, end_of_day: bool = False) -> datetime:
    """An ISO 8601 date or date-time as an aware UTC datetime; a bare date is its start, or with
    `end_of_day` the start of the next day (so `to=2026-11-30` includes that whole day)."""
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return start + timedelta(days=1) if end_of_day else start
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(field, f"{field} must be an ISO 8601 date (2026-11-30) or time (2026-11-30T09:00:00Z)") \
            from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _validate_types(types: Iterable[str] | None) -> tuple[str, ...]:
    out: list[str] = []
    for raw in types or ():
        kind = raw.strip().lower().lstrip(".")
        kind = "html" if kind == "htm" else kind
        if kind not in FILE_TYPES:
            raise QueryError("type", f"type must be one of {', '.join(FILE_TYPES)}")
        if kind not in out:
            out.append(kind)
    return tuple(out)


def validate(q: str | None, tags: Iterable[str] | None, limit: int | None, cursor: str | None,
             pii: bool | None = None, *, uploaded_from: str | None = None, uploaded_to: str | None = None,
             types: Iterable[str] | None = None, sort: str | None = None) -> SearchParams:
    """Checks and normalises the request parameters; raises QueryError naming the field
    (q, tag, limit, cursor, from, to, type, sort)."""
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
    start = parse_time(uploaded_from, "from") if uploaded_from else None
    end = parse_time(uploaded_to, "to", end_of_day=True) if uploaded_to else None
    if start is not None and end is not None and end <= start:
        raise QueryError("to", "to must be later than from")
    kinds = _validate_types(types)
    order = (sort or "relevance").strip().lower()
    if order not in SORTS:
        raise QueryError("sort", f"sort must be one of {', '.join(SORTS)}")
    if not text and not clean_tags and pii is None and start is None and end is None and not kinds:
        raise QueryError("q", "give a query q, filters (tag, pii, from, to, type), or both")
    if limit is None:
        limit = DEFAULT_LIMIT
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise QueryError("limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
    normalized_q = text or None
    filters = _filters_key(start, end, kinds, order)
    offset = decode_cursor(cursor, normalized_q, clean_tags, pii, filters) if cursor else 0
    return SearchParams(q=normalized_q, tags=tuple(clean_tags), limit=limit, offset=offset, pii=pii,
                        uploaded_from=start, uploaded_to=end, types=kinds, sort=order)


# ------------------------------------------------------------------ operators and patterns

@dataclass(frozen=True)
class QueryParts:
    """A query split into its operators (still raw text: the analyser runs later)."""

    words: tuple[str, ...]     # free words: ranked
    phrases: tuple[str, ...]   # "quoted": must occur, and ranked
    excluded: tuple[str, ...]  # -word: documents with its terms are left out


_QUERY_TOKEN = re.compile(r'"([^"]*)"|(\S+)')


def parse_operators(q: str) -> QueryParts:
    """Splits `q` into free words, "phrases" and -exclusions; `OR` is dropped (OR is the default)."""
    words: list[str] = []
    phrases: list[str] = []
    excluded: list[str] = []
    for m in _QUERY_TOKEN.finditer(q):
        phrase, word = m.group(1), m.group(2)
        if phrase is not None:
            if phrase.split():
                phrases.append(" ".join(phrase.split()))
        elif word == "OR":
            continue
        elif word.startswith("-") and len(word) > 1:
            excluded.append(word[1:])
        else:
            words.append(word)
    return QueryParts(tuple(words), tuple(phrases), tuple(excluded))


def phrase_regex(phrase: str) -> str:
    """A PostgreSQL regular expression (for ~*) matching `phrase` literally, any whitespace between words.

    Every character that is not a letter, digit or underscore is backslash-escaped, which makes it
    literal in PostgreSQL's ARE syntax, so the pattern has no operators but `\\s+` between words."""
    return r"\s+".join(re.sub(r"([^\w])", r"\\\1", word) for word in phrase.split())


def escape_like(text: str) -> str:
    """Escapes LIKE wildcards (`%`, `_`) and the escape character itself (backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def contains_pattern(text: str) -> str:
    """An ILIKE pattern (backslash escapes) matching `text` anywhere."""
    return f"%{escape_like(text)}%"


def fallback_patterns(terms: Iterable[str]) -> list[str]:
    """Substring patterns for the partial-word fallback: Hangul terms of two or more syllables.

    Latin words and codes must match whole (`tax` must not find "taxonomy"); a Hangul
    term that is not in the index may be the start or middle of a word Kiwi analysed
    differently (디지 in 디지털정부혁신)."""
    return _unique(contains_pattern(t) for t in terms
                   if len(t) >= MIN_SUBSTRING_CHARS and any("\uac00" <= c <= "\ud7a3" for c in t))


# ------------------------------------------------------------------ cursors

def query_hash(q: str | None, tags: Sequence[str], pii: bool | None = None,
               filters: dict[str, Any] | None = None) -> str:
    """Identifies the query a cursor belongs to (the order of tags does not matter); `filters`:
    `SearchParams.cursor_filters()`."""
    query: dict[str, Any] = {"q": q or "", "tags": sorted(set(tags))}
    if pii is not None:
        query["pii"] = pii
    if filters:
        query["filters"] = filters
    canonical = json.dumps(query, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def encode_cursor(offset: int, q: str | None, tags: Sequence[str], pii: bool | None = None,
                  filters: dict[str, Any] | None = None) -> str:
    """Signed and bound to the tenant (of this request's context) and the query (services/common/cursors.py)."""
    return cursors.seal({"o": offset}, tenant=tenant_id_var.get() or "",
                        binding=query_hash(q, tags, pii, filters))


def decode_cursor(cursor: str, q: str | None, tags: Sequence[str], pii: bool | None = None,
                  filters: dict[str, Any] | None = None) -> int:
    """The offset in `cursor`; QueryError(field="cursor") when malformed, altered or made for another
    tenant or query."""
    try:
        data = cursors.unseal(cursor, tenant=tenant_id_var.get() or "", binding=query_hash(q, tags, pii, filters))
    except cursors.CursorError as exc:
        raise QueryError("cursor", str(exc)) from None
    offset = data.get("o")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise QueryError("cursor", "the cursor is not valid")
    return offset


# ------------------------------------------------------------------ SQL

# BM25 parameters and the title's weight (BM25F).
K1 = 1.2
B = 0.75
TITLE_WEIGHT = 2.0
# Partial-word (substring) matches, tried only when nothing matched by terms, score this.
SUBSTRING_SCORE = 0.01

# Per tenant: N and the average field lengths (kept by a trigger, see migration 0004).
_STATS = (
    "stats AS (SELECT greatest(coalesce(s.documents, 0), 1)::float8 AS n, "
    "greatest(coalesce(s.title_terms, 0)::float8 / greatest(coalesce(s.documents, 0), 1), 1) AS avg_title, "
    "greatest(coalesce(s.text_terms, 0)::float8 / greatest(coalesce(s.documents, 0), 1), 1) AS avg_text "
    "FROM (SELECT 1) one LEFT JOIN documents.search_stats s ON s.tenant_id = public.app_tenant_id())"
)
# The query terms with their document frequency (df) and number of postings. The search service
# passes the figures it counted before (termstats.py) with the tenant's document count then
# (`n_at`); a term without them, or whose tenant has since grown or shrunk by more than
# `df_slack` of its documents, is taken from `documents.term_stats` (a large tenant's common
# terms, counted ahead by upload's term statistics job, migration 0022), scaled to the tenant's
# size now, while that count is within `stored_slack` of it; else it is counted here from the
# (tenant_id, term) index range. `counted` tells the service which figures are new.
_QTERMS = (
    "qterms AS (SELECT u.term, "
    "CASE WHEN u.fresh THEN u.df WHEN ts.df IS NOT NULL THEN ts.df * u.n / ts.n_at ELSE c.df END AS df, "
    "CASE WHEN u.fresh THEN u.postings WHEN ts.df IS NOT NULL THEN ts.postings * u.n / ts.n_at "
    "ELSE c.postings END AS postings, NOT u.fresh AND ts.df IS NULL AS counted "
    "FROM (SELECT t.term, t.df, t.postings, st.n, (t.df IS NOT NULL AND abs(st.n - t.n_at) <= %(df_slack)s * t.n_at) "
    "AS fresh FROM unnest(%(terms)s::text[], %(dfs)s::float8[], %(term_postings)s::float8[], %(n_at)s::float8[]) "
    "AS t(term, df, postings, n_at) CROSS JOIN stats st) u "
    "LEFT JOIN documents.term_stats ts ON NOT u.fresh AND ts.tenant_id = public.app_tenant_id() "
    "AND ts.term = u.term AND abs(u.n - ts.n_at) <= %(stored_slack)s * ts.n_at "
    "CROSS JOIN LATERAL (SELECT count(DISTINCT p.document_id)::float8 AS df, count(*)::float8 AS postings "
    "FROM documents.document_terms p WHERE NOT u.fresh AND ts.df IS NULL AND p.tenant_id = public.app_tenant_id() "
    "AND p.term = u.term) c)"
)
# Impact-ordered retrieval (migration 0016): each term's `per_term` best postings by impact, read
# from the (tenant_id, term, impact DESC) index; NULL means all of them (LIMIT NULL: exhaustive).
# The documents found are then scored exactly: all their postings of the query terms, by the
# primary key (document_id, term, field).
_TOP = (
    "top AS (SELECT DISTINCT tp.document_id FROM qterms q CROSS JOIN LATERAL (SELECT p.document_id "
    "FROM documents.document_terms p WHERE p.tenant_id = public.app_tenant_id() AND p.term = q.term "
    "ORDER BY p.impact DESC LIMIT %(per_term)s) tp)"
)
# The documents carrying every requested tag (a subquery; row-level security scopes it too, the
# tenant predicate lets the covering (tenant_id, tag) index be read alone). One tag needs no grouping:
# a document carrying it twice (from the model and from a person) comes twice, which `IN` and
# `DISTINCT` absorb; grouping sorted every entry (4-9 ms for 3,795) and left the planner expecting a
# handful of documents.
_TAGGED_ONE = (
    "(SELECT t.document_id FROM documents.document_tags t WHERE t.tenant_id = public.app_tenant_id() "
    "AND t.tag = ANY(%(tags)s))"
)
_TAGGED_EVERY = (
    "(SELECT t.document_id FROM documents.document_tags t WHERE t.tenant_id = public.app_tenant_id() "
    "AND t.tag = ANY(%(tags)s) GROUP BY t.document_id HAVING count(DISTINCT t.tag) = %(tag_count)s)"
)


def _tagged(tag_count: int) -> str:
    return _TAGGED_ONE if tag_count == 1 else _TAGGED_EVERY


# An exhaustive plan under tag filters: the documents carrying every requested tag that have a posting of
# a query term. The planner joins the two sides as their sizes say: a narrow tag's documents probed for
# the terms' postings by primary key, or the terms' postings read whole from the covering impact index
# and matched against a hash of the tags' documents (4.5-28 ms for a tag on 3,200-4,000 of 500,000
# documents and common terms, where probing every tagged document took 7.8-66 ms; README).
_TOP_TAGGED = (
    "top AS (SELECT DISTINCT p.document_id FROM {tagged} tg JOIN documents.document_terms p "
    "ON p.document_id = tg.document_id AND p.term = ANY(%(terms)s) WHERE p.tenant_id = public.app_tenant_id())"
)
_POSTINGS = (
    "postings AS (SELECT p.document_id, p.term, p.field, p.tf, p.field_length FROM top c "
    "JOIN documents.document_terms p ON p.document_id = c.document_id AND p.term = ANY(%(terms)s) "
    "WHERE p.tenant_id = public.app_tenant_id())"
)
# An exhaustive plan without tag filters reads every posting of the query terms straight from the
# covering impact index (index-only, about 0.2 µs a posting here) instead of collecting the documents
# first and reading their postings again by primary key (about 12-16 µs a document).
_ALL_POSTINGS = (
    "postings AS (SELECT p.document_id, p.term, p.field, p.tf, p.field_length FROM documents.document_terms p "
    "WHERE p.tenant_id = public.app_tenant_id() AND p.term = ANY(%(terms)s))"
)
# Length-normalised, title-weighted term frequency per document and term (BM25F).
_WEIGHTED_TF = (
    "wtf AS (SELECT p.document_id, p.term, sum(CASE WHEN p.field = 'title' "
    "THEN %(title_weight)s * p.tf / (1 - %(b)s + %(b)s * p.field_length / st.avg_title) "
    "ELSE p.tf / (1 - %(b)s + %(b)s * p.field_length / st.avg_text) END) AS w "
    "FROM postings p CROSS JOIN stats st GROUP BY p.document_id, p.term)"
)
_BM25 = (
    "scored AS (SELECT w.document_id AS id, sum(ln(1 + (st.n - df.df + 0.5) / (df.df + 0.5)) "
    "* w.w * (%(k1)s + 1) / (w.w + %(k1)s)) AS score "
    "FROM wtf w JOIN qterms df ON df.term = w.term CROSS JOIN stats st GROUP BY w.document_id)"
)
_RANKED_CANDIDATES = (
    "lexical AS (SELECT d.id, d.created_at, s.score FROM scored s "
    "JOIN documents.documents d ON d.id = s.id WHERE {where})"
)
_SUBSTRING_CANDIDATES = (
    "lexical AS (SELECT d.id, d.created_at, %(substring_score)s::float8 AS score FROM documents.documents d "
    "WHERE (d.title ILIKE ANY(%(patterns)s) OR d.text_content ILIKE ANY(%(patterns)s)) AND {where})"
)
# Hybrid search in two statements (see `build_plan`'s `lexical`): the first returns the ranked lexical
# candidates as three arrays (always one row, with the term figures), the second is given them back.
_LEXICAL_ARRAYS = (
    " SELECT coalesce(array_agg(l.id), '{{}}') AS lex_ids, coalesce(array_agg(l.created_at), '{{}}') AS lex_created, "
    "coalesce(array_agg(l.score), '{{}}') AS lex_scores, {terms} FROM lexical l"
)
_GIVEN_LEXICAL = (
    "lexical AS (SELECT u.id, u.created_at, u.score FROM unnest(%(lex_ids)s::uuid[], "
    "%(lex_created)s::timestamptz[], %(lex_scores)s::float8[]) AS u(id, created_at, score))"
)
# Words only: the lexical matches are the candidates.
_LEXICAL_ONLY = ", candidates AS (SELECT id, created_at, score FROM lexical)"
# Hybrid: a convex combination of the two scores, each normalised to 0..1. The semantic ranking comes
# in as the tenant's most similar documents (ids with their cosine similarity, best first, from the
# search service's vectors). A document scores
#     w_lex * BM25 / best BM25 + w_sem * max(0, (sim - floor) / (top - floor))
# where the best BM25 is taken over the lexical matches after the filters, and `top` and `floor` are
# the first and the last similarity of the semantic ranking (bound as `sem_floor` and `sem_scale`,
# 1 / (top - floor), or 0 when they are equal): a document outside it, or at its end, adds nothing
# by meaning. The candidates are the lexical matches plus
# the first `sem_add` semantic ones (ranked after the filters) at least `min_sim` similar:
# documents that share no word with the query but mean the same.
_HYBRID = (
    ", lex_best AS (SELECT id, created_at, score / nullif(max(score) OVER (), 0) AS part FROM lexical)"
    ", semantic AS (SELECT d.id, d.created_at, u.sim, row_number() OVER (ORDER BY u.sim DESC, u.ord) AS r "
    "FROM unnest(%(sem_ids)s::uuid[], %(sem_sims)s::float8[]) WITH ORDINALITY AS u(id, sim, ord) "
    "JOIN documents.documents d ON d.id = u.id WHERE {where})"
    ", candidates AS (SELECT coalesce(l.id, s.id) AS id, coalesce(l.created_at, s.created_at) AS created_at, "
    "(%(w_lex)s::float8 * coalesce(l.part, 0) + %(w_sem)s::float8 * "
    "greatest(coalesce((s.sim - %(sem_floor)s) * %(sem_scale)s, 0), 0))::float8 AS score "
    "FROM lex_best l FULL JOIN semantic s ON s.id = l.id "
    "WHERE l.id IS NOT NULL OR (s.r <= %(sem_add)s AND s.sim >= %(min_sim)s))"
)

_EXCLUDED = (
    "NOT EXISTS (SELECT 1 FROM documents.document_terms x "
    "WHERE x.document_id = d.id AND x.term = ANY(%(excluded)s))"
)
# Every phrase must occur in the title or the text.
_PHRASES = (
    "NOT EXISTS (SELECT 1 FROM unnest(%(phrases)s::text[]) ph(re) "
    "WHERE NOT (d.title ~* ph.re OR coalesce(d.text_content, '') ~* ph.re))"
)
# Tag filter for ranked candidates (a bounded set): checked per candidate through document_tags'
# primary key (document_id, ...), instead of collecting every document that carries a common tag.
_TAG_FILTER_PER_DOCUMENT = (
    "(SELECT count(DISTINCT t.tag) FROM documents.document_tags t WHERE t.document_id = d.id "
    "AND t.tag = ANY(%(tags)s)) = %(tag_count)s"
)
# Tag filter without a text query: the documents carrying the tags are the candidates.
_TAG_FILTER = "d.id IN {tagged}"
# Upload time range and file type (by the file name's extension, as upload accepted it).
_FROM = "d.created_at >= %(uploaded_from)s"
_TO = "d.created_at < %(uploaded_to)s"
_TYPES = "lower(substring(d.filename from '\\.([^.]*)$')) = ANY(%(extensions)s)"
# Personal data found in the text (migration 0006: counts per kind, '{}' when none).
_HAS_PII = "d.pii <> '{}'::jsonb"
_NO_PII = "d.pii = '{}'::jsonb"
# ------------------------------------------------------------------ browsing: no text query
# A search without q lists the documents that pass its filters: by the confidence of the requested tags
# (the average over the tags of the best score each carries, model or person; newest first among equal
# ones), or newest first. Only the rows the page and the facets need (`browse_rows`) are read in that
# order, and the total is counted apart, as cheaply as the filters allow: ranking every document of a
# common tag by a lookup each, then sorting and counting them all, took 4-5 s for a tag on 473,000 of
# 500,000 documents (README, "Search at scale").
#
# One tag alone, by confidence: the tag's rows in the order of the (tenant_id, tag, score DESC) index
# (migration 0025), each document once (the join to `documents` gives the upload time, and hides a
# document in the bin). A document carrying the tag from the model and from a person
# comes by its better row (a tie goes to the model's); the other is skipped by a primary-key probe.
_BROWSE_ONE_TAG = (
    "ranked AS (SELECT t.document_id AS id, d.created_at, t.score::float8 AS score "
    "FROM documents.document_tags t JOIN documents.documents d ON d.id = t.document_id "
    "WHERE t.tenant_id = public.app_tenant_id() AND t.tag = %(tag)s AND NOT EXISTS (SELECT 1 "
    "FROM documents.document_tags o WHERE o.document_id = t.document_id AND o.tag = t.tag AND o.source <> t.source "
    "AND (o.score > t.score OR (o.score = t.score AND o.source < t.source))) "
    "ORDER BY t.score DESC, d.created_at DESC, t.document_id DESC LIMIT %(browse_rows)s)"
)
# One tag with other filters: the total needs every document passing them, so the page is cut from that
# one pass (a document carrying the tag twice is grouped to its better row) rather than read in order apart.
_ONE_TAG_FILTERED = (
    "matches AS MATERIALIZED (SELECT t.document_id AS id, d.created_at, max(t.score)::float8 AS score "
    "FROM documents.document_tags t JOIN documents.documents d ON d.id = t.document_id "
    "WHERE t.tenant_id = public.app_tenant_id() AND t.tag = %(tag)s AND {where} GROUP BY t.document_id, d.created_at), "
    "ranked AS (SELECT id, created_at, score FROM matches ORDER BY {order} LIMIT %(browse_rows)s)"
)
# Several tags: the documents carrying every one, with their score (the average over the tags of the best
# score each carries). Read from the narrowest tag (`driver`: each tag's entries counted up to
# `driver_cap`), whose documents' tags are then checked by primary key; when every tag is on at least
# `driver_cap` documents, the tags' index entries are grouped per document instead, since probing hundreds
# of thousands of documents one by one costs seconds. Only one of the two branches runs (a one-time filter).
# Grouping alone took 0.8 s for a tag on 473,000 documents and one on 3,800.
_TAGS_SCORED = (
    "driver AS MATERIALIZED (SELECT u.tag, (SELECT count(*) FROM (SELECT 1 FROM documents.document_tags t "
    "WHERE t.tenant_id = public.app_tenant_id() AND t.tag = u.tag LIMIT %(driver_cap)s) x) AS n "
    "FROM unnest(%(tags)s::text[]) AS u(tag) ORDER BY n, u.tag LIMIT 1), "
    "tagged AS (SELECT g.id, s.score FROM (SELECT DISTINCT t.document_id AS id FROM documents.document_tags t "
    "WHERE t.tenant_id = public.app_tenant_id() AND t.tag = (SELECT tag FROM driver)) g "
    "CROSS JOIN LATERAL (SELECT avg(b.best)::float8 AS score, count(*) AS n FROM (SELECT max(o.score) AS best "
    "FROM documents.document_tags o WHERE o.document_id = g.id AND o.tag = ANY(%(tags)s) GROUP BY o.tag) b) s "
    "WHERE s.n = %(tag_count)s AND (SELECT n FROM driver) < %(driver_cap)s "
    "UNION ALL SELECT b.document_id, avg(b.best)::float8 FROM (SELECT t.document_id, t.tag, max(t.score) AS best "
    "FROM documents.document_tags t WHERE t.tenant_id = public.app_tenant_id() AND t.tag = ANY(%(tags)s) "
    "GROUP BY t.document_id, t.tag) b WHERE (SELECT n FROM driver) >= %(driver_cap)s "
    "GROUP BY b.document_id HAVING count(*) = %(tag_count)s)"
)
_BROWSE_TAGGED = (
    ", ranked AS (SELECT d.id, d.created_at, tg.score FROM tagged tg JOIN documents.documents d ON d.id = tg.id "
    "WHERE {where} ORDER BY {order} LIMIT %(browse_rows)s)"   # {order} names the output columns
)
# Newest first (one tag alone with sort=date, or no tag): the (tenant_id, created_at DESC, id DESC) index
# walked with the filters checked per document, or the filtered documents sorted, as the planner finds cheaper.
# The tags' confidence is looked up for the rows read only.
_BROWSE_BY_DATE = (
    "ranked AS (SELECT d.id, d.created_at, {score} AS score FROM documents.documents d WHERE {where} "
    "ORDER BY d.created_at DESC, d.id DESC LIMIT %(browse_rows)s)"
)
# A document's confidence in the requested tags (the rows of `_BROWSE_BY_DATE` only).
_TAG_SCORE = (
    "coalesce((SELECT avg(s.best) FROM (SELECT max(t.score) AS best FROM documents.document_tags t "
    "WHERE t.document_id = d.id AND t.tag = ANY(%(tags)s) GROUP BY t.tag) s), 0)::float8"
)
# The total. One tag and no other filter: its index entries counted alone, less the documents that carry
# it twice (a person's row whose document also has the model's: few, each checked by primary key).
_COUNT_ONE_TAG = (
    "(SELECT count(*) - count(*) FILTER (WHERE t.source = 'user' AND EXISTS (SELECT 1 "
    "FROM documents.document_tags m WHERE m.document_id = t.document_id AND m.source = 'model' AND m.tag = t.tag)) "
    "FROM documents.document_tags t WHERE t.tenant_id = public.app_tenant_id() AND t.tag = %(tag)s)"
)
_COUNT_TAGGED = "(SELECT count(*) FROM tagged tg JOIN documents.documents d ON d.id = tg.id WHERE {where})"
# Other filters: the documents passing them, counted as the planner finds cheapest.
_COUNT_FILTERED = "(SELECT count(*) FROM documents.documents d WHERE {where})"
# The page, the total and the facets from one pass over the candidates (a CTE referenced
# more than once is computed once). A row comes back even when the page is empty, so the
# total and facets are always there; its hit columns are then NULL.
# With query terms: their figures (df, postings) and the tenant's document count, for termstats.py.
_TERM_FIGURES = ("(SELECT json_agg(json_build_object('term', q.term, 'df', q.df, 'postings', q.postings, "
                 "'counted', q.counted)) FROM qterms q) AS term_figures, (SELECT n FROM stats) AS n_documents")
_NO_TERM_FIGURES = "NULL::json AS term_figures, NULL::float8 AS n_documents"
_BY_RELEVANCE = "score DESC, created_at DESC, id DESC"
_BY_DATE = "created_at DESC, id DESC"
# `rows`: the CTE the page is cut from (`candidates`: every match; `ranked`: the best `browse_rows`, when
# browsing); `total` counts every match, `lexical_total` those found by words.
_RESULT = (
    ", page AS (SELECT c.id, c.score, c.created_at FROM {rows} c "
    "ORDER BY {order} LIMIT %(fetch)s OFFSET %(offset)s)"
    ", facets AS (SELECT t.tag, count(DISTINCT t.document_id) AS count FROM documents.document_tags t "
    "JOIN (SELECT id FROM {rows} ORDER BY {order} LIMIT %(facet_candidates)s) c ON c.id = t.document_id "
    "GROUP BY t.tag ORDER BY count DESC, t.tag LIMIT %(facet_limit)s) "
    "SELECT {total} AS total, "
    "(SELECT coalesce(json_agg(json_build_object('tag', f.tag, 'count', f.count) ORDER BY f.count DESC, f.tag), "
    "'[]'::json) FROM facets f) AS facets, "
    "p.id, p.score, d.title, d.status, d.created_at, left(d.text_content, %(text_chars)s) AS text_head, "
    "(SELECT coalesce(json_agg(json_build_object('tag', x.tag, 'score', x.score) ORDER BY x.score DESC, x.tag), "
    "'[]'::json) FROM (SELECT t.tag, max(t.score) AS score FROM documents.document_tags t "
    "WHERE t.document_id = p.id GROUP BY t.tag) x) AS tags, {lexical_total} AS lexical_total, {terms} "
    "FROM (SELECT 1) one LEFT JOIN (page p JOIN documents.documents d ON d.id = p.id) ON true "
    "ORDER BY {page_order}"
)


@dataclass(frozen=True)
class SearchPlan:
    """The statement(s) of one search with their parameters.

    `sql` ranks by BM25 (or by tag confidence without a query); `fallback_sql`, when set, is
    run only if `sql` found nothing: partial-word matches of the query's Hangul terms (the search
    service binds `patterns` to those of the terms the index does not know, `engine.unknown_terms`). A ranked
    plan reads each term's `params["per_term"]` best postings; setting it to None makes the same
    statement exhaustive (every posting)."""

    sql: str
    params: dict[str, Any] = field(default_factory=dict)
    fallback_sql: str | None = None
    lexical_sql: str | None = None   # a text query's ranked lexical candidates alone (`LexicalCandidates`)


@dataclass(frozen=True)
class TermFigures:
    """A term's document frequency and number of postings, counted when the tenant had `n_at` documents."""

    df: float
    postings: float
    n_at: float


# Facets count the tags of this many best candidates (in the requested order); beyond it they are
# a sample of the best matches (`facets_partial`), since reading every candidate's tags is what cost most.
FACET_CANDIDATES = 200
# Postings read per query term, best impact first (the "top-K" of impact-ordered retrieval).
# A term with at most this many postings is read whole, so its documents are all scored.
PER_TERM = 300
# A search by several tags without q starts from the narrowest tag while it is on fewer documents than this
# (`_TAGS_SCORED`): each is then probed by primary key, a few microseconds a document.
TAG_DRIVER_CAP = 10_000
# Counted figures (df) are reused while the tenant's document count is within this share of the count then.
DF_SLACK = 0.01
# Figures stored by upload's term statistics job, scaled to the tenant's size, are used while the
# tenant's size is within this share of its size when they were counted (the job counts again at 5%).
STORED_SLACK = 0.2


def _filters(values: dict[str, Any], params: SearchParams, excluded: Sequence[str],
             phrases: Sequence[str], *, tags_per_document: bool) -> tuple[list[str], str | None]:
    """The conditions on `documents d` for the request's filters, binding their values: those other
    than the tags, and the tag condition apart (None without tags), since candidates read from the
    tags' documents need no tag check."""
    conditions = ["true"]
    tag_condition = None
    if excluded:
        values["excluded"] = list(excluded)
        conditions.append(_EXCLUDED)
    if phrases:
        values["phrases"] = [phrase_regex(p) for p in phrases]
        conditions.append(_PHRASES)
    if params.tags:
        values["tags"] = list(params.tags)
        values["tag_count"] = len(params.tags)
        tag_condition = (_TAG_FILTER_PER_DOCUMENT if tags_per_document
                         else _TAG_FILTER.format(tagged=_tagged(len(params.tags))))
    if params.pii is not None:
        conditions.append(_HAS_PII if params.pii else _NO_PII)
    if params.uploaded_from is not None:
        values["uploaded_from"] = params.uploaded_from
        conditions.append(_FROM)
    if params.uploaded_to is not None:
        values["uploaded_to"] = params.uploaded_to
        conditions.append(_TO)
    if params.types:
        values["extensions"] = [ext for kind in params.types for ext in _TYPE_EXTENSIONS.get(kind, (kind,))]
        conditions.append(_TYPES)
    return conditions, tag_condition


def _where(conditions: Sequence[str], tag_condition: str | None) -> str:
    return " AND ".join([*conditions, *([tag_condition] if tag_condition else [])])


@dataclass(frozen=True)
class Fusion:
    """How the lexical and the semantic rankings are fused (a convex combination of their normalised
    scores, `_HYBRID`), tuned on the two development sets (README, "Search"): the weights, and how many
    semantic-only documents (at least `min_sim` similar to the query) join the lexical matches."""

    w_lex: float = 0.75
    w_sem: float = 0.25
    sem_add: int = 10
    min_sim: float = 0.85


@dataclass(frozen=True)
class LexicalCandidates:
    """The rows of a plan's `lexical_sql`: its ranked lexical candidates (after the filters), in no order."""

    ids: Sequence[Any]
    created_at: Sequence[datetime]
    scores: Sequence[float]


@dataclass(frozen=True)
class Semantic:
    """The tenant's documents most similar to the query: ids and cosine similarities, best first."""

    ids: tuple[str, ...]
    sims: tuple[float, ...]
    fusion: Fusion = Fusion()


def build_plan(params: SearchParams, terms: Sequence[str] = (), excluded: Sequence[str] = (),
               phrases: Sequence[str] = (), semantic: Semantic | None = None,
               figures: Mapping[str, TermFigures] | None = None, per_term: int | None = PER_TERM,
               lexical: LexicalCandidates | None = None) -> SearchPlan:
    """The statement for a validated request.

    `terms` are the analysed query terms to rank by (free words and phrase words),
    `excluded` the analysed terms of -words, `phrases` the raw "quoted" phrases. A query
    with no term left (only stop words, particles or punctuation) matches nothing by words.
    `semantic` (hybrid search) fuses the semantic ranking in; without it the ranking is BM25 alone.
    `figures`: terms' document frequencies counted before (counted in the statement otherwise);
    `per_term`: postings read per term, best impact first (None: all).

    Hybrid search can run in two statements, so that the lexical half does not wait for the query
    vector: a text query's plan has `lexical_sql`, which returns the ranked lexical candidates (and
    the term figures) alone; a plan built with those rows as `lexical` has an `sql` that is given
    them instead of ranking them again, and answers exactly as the single statement would.

    An exhaustive plan (`per_term` None) reads every posting of the terms; under tag filters, those of
    the documents carrying the tags (`_TOP_TAGGED`), which then need no tag check of their own.
    """
    values: dict[str, Any] = {}
    conditions, tag_condition = _filters(values, params, excluded, phrases, tags_per_document=params.q is not None)
    where = _where(conditions, tag_condition)
    order = _BY_DATE if params.sort == "date" else _BY_RELEVANCE
    if params.q is None:
        return _browse_plan(params, values, conditions, tag_condition, order)
    result = _result(order, terms=_TERM_FIGURES)
    positive = _unique(t for t in terms if t not in set(excluded))
    known = figures or {}
    values.update(terms=positive, k1=K1, b=B, title_weight=TITLE_WEIGHT, per_term=per_term, df_slack=DF_SLACK,
                  stored_slack=STORED_SLACK,
                  dfs=[known[t].df if t in known else None for t in positive],
                  term_postings=[known[t].postings if t in known else None for t in positive],
                  n_at=[known[t].n_at if t in known else None for t in positive])
    exhaustive = per_term is None
    # Exhaustive candidates under tag filters come from the tags' documents only (`_TOP_TAGGED`).
    lexical_where = _where(conditions, None if exhaustive else tag_condition) if positive else "false"
    fuse = _LEXICAL_ONLY
    if semantic is not None:
        f = semantic.fusion
        first, last = (semantic.sims[0], semantic.sims[-1]) if semantic.sims else (0.0, 0.0)
        values.update(sem_ids=list(semantic.ids), sem_sims=list(semantic.sims), w_lex=f.w_lex, w_sem=f.w_sem,
                      sem_add=f.sem_add, min_sim=f.min_sim, sem_floor=last,
                      sem_scale=1.0 / (first - last) if first > last else 0.0)
        fuse = _HYBRID.format(where=where)
    if not exhaustive:
        postings = [_TOP, _POSTINGS]
    elif not params.tags:
        postings = [_ALL_POSTINGS]
    else:
        postings = [_TOP_TAGGED.format(tagged=_tagged(len(params.tags))), _POSTINGS]
    ctes = [_STATS, _QTERMS, *postings, _WEIGHTED_TF, _BM25, _RANKED_CANDIDATES.format(where=lexical_where)]
    lexical_sql = "WITH " + ", ".join(ctes) + _LEXICAL_ARRAYS.format(terms=_TERM_FIGURES)
    if lexical is None:
        sql = "WITH " + ", ".join(ctes) + fuse + result
    else:
        values.update(lex_ids=list(lexical.ids), lex_created=list(lexical.created_at),
                      lex_scores=list(lexical.scores))
        sql = "WITH " + _GIVEN_LEXICAL + fuse + _result(order, terms=_NO_TERM_FIGURES)
    fallback = None
    patterns = fallback_patterns(positive)
    if patterns and not phrases:
        values.update(patterns=patterns, substring_score=SUBSTRING_SCORE)
        fallback = "WITH " + _SUBSTRING_CANDIDATES.format(where=where) + fuse + _result(order, terms=_NO_TERM_FIGURES)
    return SearchPlan(sql=sql, params=values, fallback_sql=fallback, lexical_sql=lexical_sql)


def _result(order: str, *, terms: str, rows: str = "candidates", total: str = "(SELECT count(*) FROM candidates)",
            lexical_total: str = "(SELECT count(*) FROM lexical)") -> str:
    page_order = ", ".join(f"p.{part}" for part in order.split(", "))
    return _RESULT.format(order=order, page_order=page_order, terms=terms, rows=rows, total=total,
                          lexical_total=lexical_total)


def _browse_plan(params: SearchParams, values: dict[str, Any], conditions: Sequence[str],
                 tag_condition: str | None, order: str) -> SearchPlan:
    """A search without q: the documents passing the filters, by the requested tags' confidence (newest
    first without tags, or with sort=date). Only the best `browse_rows` are read in order (the page and
    the facets' candidates); the total is counted apart (see `_BROWSE_ONE_TAG` and what follows it)."""
    values["browse_rows"] = max(params.offset + params.limit + 1, FACET_CANDIDATES)
    where = _where(conditions, None)
    other_filters = len(conditions) > 1   # besides the tags ("true" always comes first)
    if len(params.tags) == 1:
        values["tag"] = params.tags[0]
    if len(params.tags) > 1:
        values["driver_cap"] = TAG_DRIVER_CAP
        ctes = _TAGS_SCORED + _BROWSE_TAGGED.format(where=where, order=order)
        total = _COUNT_TAGGED.format(where=where) if other_filters else "(SELECT count(*) FROM tagged)"
    elif params.tags and other_filters:
        ctes = _ONE_TAG_FILTERED.format(where=where, order=order)
        total = "(SELECT count(*) FROM matches)"
    elif params.tags and params.sort != "date":
        ctes, total = _BROWSE_ONE_TAG, _COUNT_ONE_TAG
    elif params.tags:
        ctes, total = _BROWSE_BY_DATE.format(score=_TAG_SCORE, where=_where(conditions, tag_condition)), _COUNT_ONE_TAG
    else:
        ctes, total = _BROWSE_BY_DATE.format(score="0::float8", where=where), _COUNT_FILTERED.format(where=where)
    sql = "WITH " + ctes + _result(order, terms=_NO_TERM_FIGURES, rows="ranked", total=total, lexical_total="0")
    return SearchPlan(sql=sql, params=values)


def _unique(items: Iterable[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out
