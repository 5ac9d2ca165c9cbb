"""HTTP API: GET /api/v1/search inside the caller's tenant."""
from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

import psycopg
from fastapi import Depends, FastAPI, Query, Response
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, Field

from services.common.auth import Principal, TokenVerifier
from services.common.db import Database
from services.common.errors import ProblemError
from services.common.grpc_utils import GrpcSecurity
from services.common.http import create_app

from . import engine, query
from .ann_store import IndexStore
from .morph import Analyser
from .semantic import QueryEncoder, SemanticSearch
from .settings import SearchSettings
from .vectors import VectorCache

log = logging.getLogger(__name__)


class TagScoreOut(BaseModel):
    tag: str
    score: float


class HitOut(BaseModel):
    id: str
    title: str
    snippet: str
    score: float
    tags: list[TagScoreOut]
    status: str
    created_at: datetime


class FacetOut(BaseModel):
    tag: str
    count: int


class FacetsOut(BaseModel):
    tags: list[FacetOut]


class SearchOut(BaseModel):
    hits: list[HitOut]
    total: int = Field(description="documents matching; with total_is_lower_bound, at least this many")
    total_is_lower_bound: bool = Field(False, description="true when a query term is so common that only its best "
                                                          "matches were counted: total and facets are then lower "
                                                          "bounds (the ranking of the page is exact BM25 over them)")
    next_cursor: str | None
    facets: FacetsOut
    facets_partial: bool = Field(False, description="true when there are more matches than the facets looked at: "
                                                    "tag counts are then over the best 200 matches")
    retrieval: str = Field(description='"hybrid": ranked by words and meaning; "lexical": by words only')
    degraded_reason: str | None = Field(description="why a text query was ranked by words only "
                                                    "(e.g. model-serving unavailable); null otherwise")
    relaxed_phrases: list[str] = Field([], description='"quoted" phrases of the query that no document contains '
                                                       "as written: the hits rank their words instead")


class SimilarOut(BaseModel):
    document_id: str
    hits: list[HitOut] = Field(description="the closest documents first; score is the cosine similarity")
    model: str | None = Field(description="the embedding model compared; null when the document has none")
    reason: str | None = Field(description="why there are no hits, when the document has no embedding")


def result_to_response(result: engine.SearchResult) -> SearchOut:
    return SearchOut(
        hits=_hits_out(result.hits),
        total=result.total,
        total_is_lower_bound=result.total_is_lower_bound,
        facets_partial=result.facets_partial,
        next_cursor=result.next_cursor,
        facets=FacetsOut(tags=[FacetOut(tag=f.tag, count=f.count) for f in result.facets]),
        retrieval=result.retrieval,
        degraded_reason=result.degraded_reason,
        relaxed_phrases=list(result.relaxed_phrases),
    )


def _hits_out(hits: tuple[engine.Hit, ...]) -> list[HitOut]:
    return [HitOut(id=h.id, title=h.title, snippet=h.snippet, score=h.score,
                   tags=[TagScoreOut(tag=t.tag, score=t.score) for t in h.tags],
                   status=h.status, created_at=h.created_at) for h in hits]


TYPE_HELP = f"file type, repeatable (any of): {', '.join(query.FILE_TYPES)}"


def make_semantic(settings: SearchSettings, cache: VectorCache) -> SemanticSearch:
    """Hybrid search's query encoder (a gRPC channel to model-serving): create it on the running loop."""
    encoder = QueryEncoder(settings.model_grpc_target, GrpcSecurity.from_settings(settings),
                           timeout_s=settings.embed_timeout_ms / 1000,
                           retry_after_s=settings.embed_retry_s)
    return SemanticSearch(encoder, cache, settings.semantic_candidates, settings.fusion())


def make_cache(settings: SearchSettings) -> VectorCache:
    store = IndexStore(settings.state_dir / "search-index") if settings.ann_persist else None
    return VectorCache(refresh_s=settings.vector_refresh_s, full_reload_s=settings.vector_full_reload_s,
                       policy=settings.index_policy(), store=store,
                       late_commit_margin=timedelta(seconds=settings.vector_late_commit_s))


def build_app(settings: SearchSettings, db: Database, *, manage_db: bool = True,
              analyser: Analyser | None = None, semantic: SemanticSearch | None = None,
              cache: VectorCache | None = None) -> FastAPI:
    """The search HTTP app. With `manage_db` its lifespan opens and closes `db`; the
    process entry point manages the pool itself because gRPC shares it. The lifespan also
    starts loading the Korean analyser; /readyz fails until it has loaded.

    `semantic`: hybrid search (the process passes the one it shares with gRPC); without it and
    with DOCTAG_SEMANTIC_SEARCH on, the lifespan makes one and closes it."""
    verifier = TokenVerifier(settings.public_key_path, settings.jwt_issuer, settings.jwt_audience)
    analyser = analyser or Analyser()
    cache = cache or (semantic.cache if semantic is not None else make_cache(settings))
    state: dict[str, SemanticSearch | None] = {"semantic": semantic}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        analyser.start()
        owned = None
        if state["semantic"] is None and settings.semantic_search:
            owned = state["semantic"] = make_semantic(settings, cache)
        try:
            async with _managed(db, manage_db):
                yield
        finally:
            if owned is not None:
                await owned.close()
                state["semantic"] = None
            await cache.close()   # index builds in progress stop
            await analyser.close()

    app = create_app(settings.service_name, title="doctag search",
                     readiness={"database": db.ping, "analyser": analyser.check}, lifespan=lifespan,
                     max_body_bytes=settings.max_request_bytes, api_docs=settings.api_docs)
    app.state.analyser = analyser
    app.state.semantic = state

    @app.get("/api/v1/search", response_model=SearchOut, tags=["search"],
             summary="Ranked Korean full-text and tag search in the caller's department; snippets are HTML "
                     "with <mark> around matched words")
    async def search(
        response: Response,
        q: str | None = Query(None, description=f"search text, up to {query.MAX_QUERY_CHARS} characters; "
                                                "ranked by BM25 over Korean morphemes, any word may match; "
                                                "\"exact phrase\", -word to exclude, OR accepted"),
        tag: list[str] = Query([], description="documents must carry every given tag"),
        pii: bool | None = Query(None, description="true: only documents in which personal data was found; "
                                                   "false: only documents without"),
        limit: int = Query(query.DEFAULT_LIMIT, description=f"hits per page, 1..{query.MAX_LIMIT}"),
        cursor: str | None = Query(None, description="next_cursor of the previous page of the same query"),
        uploaded_from: str | None = Query(None, alias="from", description="uploaded at or after: ISO 8601 date "
                                                                         "or time (UTC when it has no zone)"),
        uploaded_to: str | None = Query(None, alias="to", description="uploaded before; a bare date includes "
                                                                     "that whole day"),
        type_: list[str] = Query([], alias="type", description=TYPE_HELP),
        sort: str | None = Query(None, description="relevance (default) or date (newest first)"),
        principal: Principal = Depends(verifier),
    ) -> SearchOut:
        try:
            params = query.validate(q, tag, limit, cursor, pii, uploaded_from=uploaded_from, uploaded_to=uploaded_to,
                                    types=type_, sort=sort)
        except query.QueryError as exc:
            raise ProblemError(422, exc.message, field=exc.field) from None
        try:
            engine.parse_tenant_id(principal.tenant_id)
        except ValueError:
            raise ProblemError(401, "the token's tenant is not valid", slug="invalid-token",
                               field="Authorization") from None
        try:
            result = await engine.search(db, principal.tenant_id, params, state["semantic"])
        except (psycopg.OperationalError, PoolTimeout) as exc:
            log.warning("database unavailable: %s", exc)
            raise ProblemError(503, "the search database is unavailable; try again shortly",
                               headers={"Retry-After": "5"}) from None
        response.headers["Server-Timing"] = result.timings.server_timing()   # where the time went, per stage
        return result_to_response(result)

    async def similar(document_id: str, limit: int, principal: Principal) -> SimilarOut:
        if not 1 <= limit <= settings.similar_max_limit:
            raise ProblemError(422, f"limit must be an integer from 1 to {settings.similar_max_limit}",
                               field="limit")
        try:
            engine.parse_tenant_id(principal.tenant_id)
        except ValueError:
            raise ProblemError(401, "the token's tenant is not valid", slug="invalid-token",
                               field="Authorization") from None
        try:
            uuid.UUID(document_id)
        except ValueError:
            raise ProblemError(404, "document not found", slug="not-found") from None
        try:
            result = await engine.similar(db, principal.tenant_id, document_id, limit, cache)
        except engine.DocumentNotFound:
            raise ProblemError(404, "document not found", slug="not-found") from None
        except (psycopg.OperationalError, PoolTimeout) as exc:
            log.warning("database unavailable: %s", exc)
            raise ProblemError(503, "the search database is unavailable; try again shortly",
                               headers={"Retry-After": "5"}) from None
        return SimilarOut(document_id=result.document_id, hits=_hits_out(result.hits), model=result.model,
                          reason=result.reason)

    similar_summary = ("Documents of the caller's department closest in meaning to this one (stored e5 "
                       "embeddings), the document itself and deleted documents excluded")

    @app.get("/api/v1/documents/{document_id}/similar", response_model=SimilarOut, tags=["search"],
             summary=similar_summary)
    async def similar_documents(document_id: str, limit: int = Query(10, description="hits, 1..50"),
                                principal: Principal = Depends(verifier)) -> SimilarOut:
        return await similar(document_id, limit, principal)

    # The same under the search prefix, which the gateway routes to search (its routes are path prefixes).
    @app.get("/api/v1/search/documents/{document_id}/similar", response_model=SimilarOut, tags=["search"],
             summary=similar_summary)
    async def similar_documents_via_search(document_id: str, limit: int = Query(10, description="hits, 1..50"),
                                           principal: Principal = Depends(verifier)) -> SimilarOut:
        return await similar(document_id, limit, principal)

    return app


@asynccontextmanager
async def _managed(db: Database, manage: bool) -> AsyncIterator[None]:
    if not manage:
        yield
        return
    await db.open()
    try:
        yield
    finally:
        await db.close()
