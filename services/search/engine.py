"""Runs a search inside one tenant: the one query function behind HTTP and gRPC."""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from services.common.db import Database
from services.common.embeddings import unpack

from . import morph, query, timing
from .semantic import SemanticSearch, SemanticUnavailable
from .snippet import literal_spans, make_snippet
from .termstats import TermFiguresCache, truncated
from .vectors import VectorCache, top_similar

# Characters of a document's text fetched to build its snippet.
SNIPPET_SCAN_CHARS = 20_000
# Characters the analyser reads to find an inflected form (늘렸다 for 늘리다) when no query term
# occurs literally: running Kiwi over the whole fetched text cost milliseconds per long hit.
LOCATE_CHARS = 2_000
# Query terms' document frequencies, per tenant, for this replica (see termstats.py).
TERM_FIGURES = TermFiguresCache()


@dataclass(frozen=True)
class TagScore:
    tag: str
    score: float


@dataclass(frozen=True)
class Hit:
    id: str
    title: str
    snippet: str
    score: float
    tags: tuple[TagScore, ...]
    status: str
    created_at: datetime


@dataclass(frozen=True)
class Facet:
    tag: str
    count: int


@dataclass(frozen=True)
class SearchResult:
    hits: tuple[Hit, ...]
    total: int
    next_cursor: str | None
    facets: tuple[Facet, ...]
    retrieval: str = "lexical"              # "hybrid": words and meaning; "lexical": words only
    degraded_reason: str | None = None      # why a text query was answered by words only
    total_is_lower_bound: bool = False      # total (and facets) count the best candidates only: at least this many
    facets_partial: bool = False            # facets count the tags of the best query.FACET_CANDIDATES matches only
    relaxed_phrases: tuple[str, ...] = ()   # "quoted" phrases no document contains: their words were ranked instead
    timings: timing.StageTimes = field(default_factory=timing.StageTimes, compare=False)   # where the time went


def parse_tenant_id(tenant_id: str) -> str:
    """The tenant id as a canonical UUID string; ValueError when it is not one."""
    return str(uuid.UUID(str(tenant_id)))


async def search(db: Database, tenant_id: str, params: query.SearchParams,
                 semantic_search: SemanticSearch | None = None) -> SearchResult:
    """Matching documents of `tenant_id` only (row-level security does the scoping).

    One statement gives the page, the total and the facets (see `query.build_plan`); a
    second runs only when the ranked query found nothing by words and partial words may still
    match. The ranked statement scores each query term's best postings (`query.PER_TERM`, by
    impact); when a term has more, the total and facets count those candidates only
    (`total_is_lower_bound`), and the statement is run again over every posting when the bounded
    candidates cannot fill the requested page (a narrow filter, a deep page) or the order is by date.
    With `semantic_search` a text query is hybrid (BM25 fused with the semantic ranking);
    when no query vector can be had it is answered by words alone, and the result says why.

    Hybrid search does not wait for the query vector before it reads the index: the query is sent
    to model-serving first, the analyser and the lexical half (`plan.lexical_sql`) run meanwhile,
    and a second statement fuses the lexical candidates it is given with the semantic ranking.

    A query whose "quoted" phrases no document contains is answered by its words, phrases ranked as
    words (`relaxed_phrases` names them), when that finds something; -exclusions and filters still hold.
    """
    tenant = parse_tenant_id(tenant_id)
    times = timing.started()   # before the semantic task is created: it records into the same
    ranking, vector_at_hand = _start_semantic(db, tenant, params, semantic_search)
    try:
        analyzed: morph.AnalyzedQuery | None = None
        if params.q:
            with timing.stage("analyse"):
                analyzed = await asyncio.to_thread(morph.analyze_query, params.q)
        result = await _search(db, tenant, params, analyzed, ranking, semantic_search, vector_at_hand)
        if analyzed is not None and analyzed.phrases and result.total == 0:
            # No document contains a quoted phrase as written (often a title or a quotation typed from
            # memory): rank its words instead, and say so, rather than answer with nothing.
            relaxed = replace(analyzed, phrases=())
            loose = await _search(db, tenant, params, relaxed, ranking, semantic_search, vector_at_hand)
            if loose.total:
                result = replace(loose, relaxed_phrases=analyzed.phrases)
        times.observe()
        return replace(result, timings=times)
    finally:
        if ranking is not None:
            if not ranking.done():
                ranking.cancel()
            elif not ranking.cancelled():
                ranking.exception()   # retrieved, so a failure on another path is not reported as lost


def statement_values(plan: query.SearchPlan, params: query.SearchParams) -> dict[str, Any]:
    """The bound values of a plan's statements: its own and the page's."""
    return {
        **plan.params,
        "text_chars": SNIPPET_SCAN_CHARS,
        "fetch": params.limit + 1,
        "offset": params.offset,
        "facet_limit": query.FACET_LIMIT,
        "facet_candidates": query.FACET_CANDIDATES,
    }


def _start_semantic(db: Database, tenant: str, params: query.SearchParams, semantic_search: SemanticSearch | None
                    ) -> tuple[asyncio.Task[query.Semantic] | None, bool]:
    """The semantic ranking of a text query, started at once (it may wait on model-serving), and whether
    its query vector is at hand already (the replica's cache: no model call to wait for)."""
    if not params.q or semantic_search is None:
        return None, False
    parts = query.parse_operators(params.q)
    wanted = " ".join((*parts.words, *parts.phrases)).strip()
    if not wanted:
        return None, False
    at_hand = semantic_search.encoder.has(wanted)
    return asyncio.create_task(semantic_search.ranking(db, tenant, wanted)), at_hand


async def _semantic_outcome(ranking: asyncio.Task[query.Semantic] | None, configured: bool
                            ) -> tuple[query.Semantic | None, str, str | None]:
    """(the semantic ranking or None, the retrieval mode, why a text query is answered by words only)."""
    if ranking is None:
        return None, "lexical", None if configured else "semantic search is not configured"
    try:
        return await ranking, "hybrid", None
    except SemanticUnavailable as exc:
        return None, "lexical", str(exc)


async def _search(db: Database, tenant: str, params: query.SearchParams, analyzed: morph.AnalyzedQuery | None,
                  ranking: asyncio.Task[query.Semantic] | None, semantic_search: SemanticSearch | None,
                  vector_at_hand: bool = False) -> SearchResult:
    semantic: query.Semantic | None = None
    retrieval, reason = "lexical", None
    per_term = None if params.sort == "date" else query.PER_TERM
    figures = TERM_FIGURES.known(tenant, analyzed.terms) if analyzed is not None else None
    # Two statements only when there is a model call to overlap: with the query vector at hand (a next
    # page, a query asked again) the semantic ranking is a nearest-neighbour search of a few milliseconds,
    # done while the query is analysed, and one statement saves a round trip and a transaction.
    two_statements = analyzed is not None and ranking is not None and per_term is not None and not vector_at_hand
    if analyzed is not None and not two_statements:
        with timing.stage("vector_wait"):
            semantic, retrieval, reason = await _semantic_outcome(ranking, semantic_search is not None)

    def plan_for(per_term: int | None, lexical: query.LexicalCandidates | None = None) -> query.SearchPlan:
        if analyzed is None:
            return query.build_plan(params)
        return query.build_plan(params, analyzed.terms, analyzed.excluded, analyzed.phrases, semantic,
                                figures=figures, per_term=per_term, lexical=lexical)

    plan = plan_for(per_term)
    values = statement_values(plan, params)
    lexical_ids: frozenset[Any] | None = None   # the hits found by words, where known (for the snippets)
    cannot_fill = False
    if two_statements:
        # The lexical half runs while the query is embedded; the second statement is given its rows.
        with timing.stage("lexical"):
            lexical = await _lexical_half(db, tenant, plan, values)
        term_figures, n_documents = lexical["term_figures"], lexical["n_documents"]
        with timing.stage("vector_wait"):
            semantic, retrieval, reason = await _semantic_outcome(ranking, True)
        lexical_ids = frozenset(lexical["lex_ids"])
        # When the bounded candidates cannot fill the page, the fusing statement would only be run again
        # over every posting (below), so it is skipped (its plan still carries the fused fallback).
        cannot_fill = (truncated(term_figures, per_term)
                       and _most_rows(len(lexical_ids), semantic, params.offset) < values["fetch"])
        given = query.LexicalCandidates(lexical["lex_ids"], lexical["lex_created"], lexical["lex_scores"])
        plan = plan_for(per_term, None if cannot_fill else given)
        values.update(plan.params)
    async with db.tenant_transaction(tenant) as conn:
        # A term's best postings are read in impact order from its index range; the planner, which
        # cannot know the term's size when planning, would otherwise often read the whole range and sort.
        if analyzed is not None:
            await conn.execute("SET LOCAL enable_bitmapscan = off")
        with timing.stage("page"):
            rows = [] if cannot_fill else await (await conn.execute(plan.sql, values)).fetchall()
        if not two_statements:
            term_figures = rows[0]["term_figures"] if rows else None
            n_documents = rows[0]["n_documents"] if rows else None
        TERM_FIGURES.remember(tenant, term_figures, n_documents)
        bounded = truncated(term_figures, values.get("per_term"))
        if bounded and sum(1 for r in rows if r["id"] is not None) < values["fetch"]:
            # The bounded candidates did not fill the page (a narrow filter, a deep page): every posting.
            exhaustive = plan_for(None)
            with timing.stage("exhaustive"):
                rows = await (await conn.execute(exhaustive.sql, {**values, **exhaustive.params})).fetchall()
            bounded, lexical_ids = False, None
        patterns = query.fallback_patterns(unknown_terms(term_figures)) if plan.fallback_sql else []
        if plan.fallback_sql and patterns and rows and rows[0]["lexical_total"] == 0:
            await conn.execute("SET LOCAL enable_bitmapscan = on")   # the trigram indexes are read by bitmap
            with timing.stage("fallback"):
                rows = await (await conn.execute(plan.fallback_sql, {**values, "patterns": patterns})).fetchall()
            bounded, lexical_ids = False, None
    total = int(rows[0]["total"]) if rows else 0
    facets = rows[0]["facets"] if rows else []
    found = [r for r in rows if r["id"] is not None]
    page = found[: params.limit]
    with timing.stage("snippets"):
        hits = await asyncio.to_thread(_build_hits, page, analyzed, lexical_ids)
    more = len(found) > params.limit
    next_cursor = query.encode_cursor(params.offset + params.limit, params.q, params.tags, params.pii,
                                      params.cursor_filters()) if more else None
    return SearchResult(
        hits=tuple(hits),
        total=total,
        next_cursor=next_cursor,
        facets=tuple(Facet(f["tag"], int(f["count"])) for f in facets),
        retrieval=retrieval,
        degraded_reason=reason,
        total_is_lower_bound=bounded,
        facets_partial=total > query.FACET_CANDIDATES,
    )


def unknown_terms(figures: list[dict[str, Any]] | None) -> list[str]:
    """The query terms no document of the tenant has (document frequency 0): a typo, a word cut short or
    analysed otherwise than in the documents. Only these are looked for inside words when nothing matched.

    A term the index knows found nothing only because of the filters (a tag, dates) or the -exclusions;
    looking for it as a substring would find the same word again at the cost of reading every text
    (a two-syllable pattern has no trigram to use the index with: 5.3 s at 500,000 documents)."""
    return [str(f["term"]) for f in figures or () if not float(f["df"] or 0)]


def _most_rows(lexical_candidates: int, semantic: query.Semantic | None, offset: int) -> int:
    """The most rows the fusing statement can return: the lexical candidates (after the filters) and at
    most `sem_add` documents found by meaning alone, less the rows before the page."""
    added = semantic.fusion.sem_add if semantic is not None else 0
    return max(0, lexical_candidates + added - offset)


async def _lexical_half(db: Database, tenant: str, plan: query.SearchPlan, values: dict[str, Any]
                        ) -> dict[str, Any]:
    """The row of `plan.lexical_sql`: the ranked lexical candidates as arrays, and the term figures.

    Its own transaction: the semantic ranking may need a pooled connection (its vector cache's
    refresh), so none is held while waiting for it."""
    assert plan.lexical_sql is not None   # a text query's plan has one
    async with db.tenant_transaction(tenant) as conn:
        await conn.execute("SET LOCAL enable_bitmapscan = off")
        row = await (await conn.execute(plan.lexical_sql, values)).fetchone()
    assert row is not None   # an aggregate: always one row
    return dict(row)


def _build_hits(rows: list[dict[str, Any]], analyzed: morph.AnalyzedQuery | None,
                lexical_ids: frozenset[Any] | None = None) -> list[Hit]:
    """Snippets may need the analyser (inflected forms, highlights): runs in a worker thread.

    Highlights come from the terms as written where any occurs in the snippet; only a text
    without one (늘렸다 for 늘리다) is analysed, once per hit: the snippet's marks are taken from
    the same analysis that located the term (or found none: a hit by meaning alone). Where both
    kinds meet in one snippet, the inflected form then goes unmarked: the price of not running
    Kiwi for every hit. `lexical_ids`, when known, are the hits found by words: a hit found by
    meaning alone shares no indexed term with the query (among the postings read), so its text is
    not analysed at all (it costs milliseconds a hit); query words written as such are still marked."""
    return [
        Hit(
            id=str(row["id"]),
            title=row["title"],
            snippet=_snippet(row, analyzed, analyse=lexical_ids is None or row["id"] in lexical_ids),
            score=round(float(row["score"]), 6),
            tags=tuple(TagScore(t["tag"], round(float(t["score"]), 4)) for t in row["tags"]),
            status=row["status"],
            created_at=row["created_at"],
        )
        for row in rows
    ]


def _snippet(row: dict[str, Any], analyzed: morph.AnalyzedQuery | None, *, analyse: bool = True) -> str:
    if analyzed is None:
        return make_snippet(row["text_head"], row["title"], [])
    if not analyse:
        return make_snippet(row["text_head"], row["title"], [*analyzed.phrases, *analyzed.terms],
                            marks=lambda piece: literal_spans(piece, analyzed.terms))
    wanted = set(analyzed.terms)
    analysed: dict[str, list[tuple[int, int]]] = {}   # a text's start -> spans of query terms in it

    def term_spans(text: str) -> list[tuple[int, int]]:
        head = text[:LOCATE_CHARS]
        if head not in analysed:
            analysed[head] = [(m.start, m.end) for m in morph.morphemes(head) if m.term in wanted]
        return analysed[head]

    def locate(text: str) -> tuple[int, int] | None:
        spans = term_spans(text)
        return spans[0] if spans else None

    def marks(piece: str) -> list[tuple[int, int]]:
        literal = literal_spans(piece, analyzed.terms)
        if literal:
            return literal
        for head, spans in analysed.items():   # the piece is cut from a text analysed above
            offset = head.find(piece)
            if offset >= 0:
                return [(a - offset, b - offset) for a, b in spans if offset <= a and b <= offset + len(piece)]
        return [(m.start, m.end) for m in morph.morphemes(piece) if m.term in wanted]

    return make_snippet(row["text_head"], row["title"], [*analyzed.phrases, *analyzed.terms],
                        locate=locate, marks=marks)


class DocumentNotFound(LookupError):
    """No live document with this id in the caller's tenant."""


@dataclass(frozen=True)
class SimilarResult:
    document_id: str
    hits: tuple[Hit, ...]
    model: str | None            # the embedding model compared; None when the document has no embedding
    reason: str | None = None    # why there are no hits (no embedding yet)


_SIMILAR_SQL = (
    "SELECT d.id, u.sim AS score, d.title, d.status, d.created_at, left(d.text_content, %(text_chars)s) AS text_head, "
    "(SELECT coalesce(json_agg(json_build_object('tag', x.tag, 'score', x.score) ORDER BY x.score DESC, x.tag), "
    "'[]'::json) FROM (SELECT t.tag, max(t.score) AS score FROM documents.document_tags t "
    "WHERE t.document_id = d.id GROUP BY t.tag) x) AS tags "
    "FROM unnest(%(ids)s::uuid[], %(sims)s::float8[]) WITH ORDINALITY AS u(id, sim, ord) "
    "JOIN documents.documents d ON d.id = u.id WHERE d.id <> %(self)s ORDER BY u.ord LIMIT %(limit)s"
)
# Candidates read beyond `limit`: the cache may still hold documents deleted since it was read.
SIMILAR_SLACK = 20


async def similar(db: Database, tenant_id: str, document_id: str, limit: int, cache: VectorCache) -> SimilarResult:
    """The live documents of the tenant whose embeddings are closest to the document's, itself excluded.

    DocumentNotFound for an unknown, deleted or other tenant's document (row-level security and
    the search role's policies hide those)."""
    tenant = parse_tenant_id(tenant_id)
    doc = str(uuid.UUID(document_id))
    async with db.tenant_transaction(tenant) as conn:
        row = await (await conn.execute(
            "SELECT d.id, e.model, e.vector FROM documents.documents d "
            "LEFT JOIN documents.document_embeddings e ON e.document_id = d.id WHERE d.id = %s", (doc,))).fetchone()
    if row is None:
        raise DocumentNotFound(doc)
    if row["model"] is None:
        return SimilarResult(doc, (), None, "the document has no embedding yet (not tagged, or tagged "
                                            "while model-serving served no embeddings)")
    vectors = await cache.vectors(db, tenant, row["model"])
    own = unpack(row["vector"])
    ids, sims = await asyncio.to_thread(top_similar, vectors, own, limit + SIMILAR_SLACK, doc)
    async with db.tenant_transaction(tenant) as conn:
        rows = await (await conn.execute(_SIMILAR_SQL, {
            "ids": ids, "sims": sims, "self": doc, "limit": limit, "text_chars": SNIPPET_SCAN_CHARS})).fetchall()
    hits = await asyncio.to_thread(_build_hits, rows, None)
    return SimilarResult(doc, tuple(hits), row["model"])
