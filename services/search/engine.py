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
    """Matching documents of `tenant_id` only (row-level security does the scoping)."""
    tenant = parse_tenant_id(tenant_id)
    analyzed = await asyncio.to_thread(morph.analyze_query, params.q) if params.q else None
    plan = query.build_plan(params, analyzed.terms if analyzed else (), analyzed.surfaces if analyzed else ())
    values: dict[str, Any] = {
        **plan.params,
        "text_chars": SNIPPET_SCAN_CHARS,
        "fetch": params.limit + 1,
        "offset": params.offset,
        "facet_limit": query.FACET_LIMIT,
    }
    async with db.tenant_transaction(tenant) as conn:
        rows = await (await conn.execute(query.page_sql(plan), values)).fetchall()
        total_row = await (await conn.execute(query.count_sql(plan), values)).fetchone()
        facet_rows = await (await conn.execute(query.facets_sql(plan), values)).fetchall()
        page = rows[: params.limit]
        tag_rows = []
        if page:
            tag_rows = await (await conn.execute(query.HIT_TAGS_SQL, {"ids": [r["id"] for r in page]})).fetchall()
    tags_by_doc: dict[Any, list[TagScore]] = {}
    for row in tag_rows:
        tags_by_doc.setdefault(row["document_id"], []).append(TagScore(row["tag"], round(float(row["score"]), 4)))
    hits = await asyncio.to_thread(_build_hits, page, tags_by_doc, analyzed)
    more = len(rows) > params.limit
    next_cursor = query.encode_cursor(params.offset + params.limit, params.q, params.tags) if more else None
    return SearchResult(
        hits=tuple(hits),
        total=int(total_row["total"]) if total_row else 0,
        next_cursor=next_cursor,
        facets=tuple(Facet(r["tag"], int(r["count"])) for r in facet_rows),
    )


def _build_hits(rows: list[dict[str, Any]], tags_by_doc: dict[Any, list[TagScore]],
                analyzed: morph.AnalyzedQuery | None) -> list[Hit]:
    """Snippets need the analyser for inflected forms: runs in a worker thread."""
    needles: list[str] = []
    locate = None
    if analyzed is not None:
        needles = [analyzed.text, *analyzed.text.split(), *analyzed.surfaces, *analyzed.terms]
        wanted = set(query.clean_terms(analyzed.terms))

        def locate(text: str) -> tuple[int, int] | None:
            for m in morph.morphemes(text):
                if m.term in wanted:
                    return m.start, m.end
            return None

    return [
        Hit(
            id=str(row["id"]),
            title=row["title"],
            snippet=make_snippet(row["text_head"], row["title"], needles, locate=locate),
            score=round(float(row["score"]), 6),
            tags=tuple(tags_by_doc.get(row["id"], ())),
            status=row["status"],
            created_at=row["created_at"],
        )
        for row in rows
    ]
