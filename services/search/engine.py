"""Runs a search inside one tenant: the one query function behind HTTP and gRPC."""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.common.db import Database

from . import morph, query
from .snippet import make_snippet

# Characters of a document's text fetched to build its snippet.
SNIPPET_SCAN_CHARS = 20_000


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


def parse_tenant_id(tenant_id: str) -> str:
    """The tenant id as a canonical UUID string; ValueError when it is not one."""
    return str(uuid.UUID(str(tenant_id)))


async def search(db: Database, tenant_id: str, params: query.SearchParams) -> SearchResult:
    """Matching documents of `tenant_id` only (row-level security does the scoping).

    One statement gives the page, the total and the facets (see `query.build_plan`); a
    second runs only when the ranked query found nothing and partial words may still match.
    """
    tenant = parse_tenant_id(tenant_id)
    analyzed = await asyncio.to_thread(morph.analyze_query, params.q) if params.q else None
    if analyzed is not None:
        plan = query.build_plan(params, analyzed.terms, analyzed.excluded, analyzed.phrases)
    else:
        plan = query.build_plan(params)
    values: dict[str, Any] = {
        **plan.params,
        "text_chars": SNIPPET_SCAN_CHARS,
        "fetch": params.limit + 1,
        "offset": params.offset,
        "facet_limit": query.FACET_LIMIT,
    }
    async with db.tenant_transaction(tenant) as conn:
        rows = await (await conn.execute(plan.sql, values)).fetchall()
        if plan.fallback_sql and rows and rows[0]["total"] == 0:
            rows = await (await conn.execute(plan.fallback_sql, values)).fetchall()
    total = int(rows[0]["total"]) if rows else 0
    facets = rows[0]["facets"] if rows else []
    found = [r for r in rows if r["id"] is not None]
    page = found[: params.limit]
    hits = await asyncio.to_thread(_build_hits, page, analyzed)
    more = len(found) > params.limit
    next_cursor = query.encode_cursor(params.offset + params.limit, params.q, params.tags, params.pii) if more else None
    return SearchResult(
        hits=tuple(hits),
        total=total,
        next_cursor=next_cursor,
        facets=tuple(Facet(f["tag"], int(f["count"])) for f in facets),
    )


def _build_hits(rows: list[dict[str, Any]], analyzed: morph.AnalyzedQuery | None) -> list[Hit]:
    """Snippets need the analyser (inflected forms, highlights): runs in a worker thread."""
    needles: list[str] = []
    locate = None
    marks = None
    if analyzed is not None:
        wanted = set(analyzed.terms)
        needles = [*analyzed.phrases, *analyzed.terms]

        def locate(text: str) -> tuple[int, int] | None:
            for m in morph.morphemes(text):
                if m.term in wanted:
                    return m.start, m.end
            return None

        def marks(text: str) -> list[tuple[int, int]]:
            return [(m.start, m.end) for m in morph.morphemes(text) if m.term in wanted]

    return [
        Hit(
            id=str(row["id"]),
            title=row["title"],
            snippet=make_snippet(row["text_head"], row["title"], needles, locate=locate, marks=marks),
            score=round(float(row["score"]), 6),
            tags=tuple(TagScore(t["tag"], round(float(t["score"]), 4)) for t in row["tags"]),
            status=row["status"],
            created_at=row["created_at"],
        )
        for row in rows
    ]
