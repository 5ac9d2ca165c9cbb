"""HTTP API: GET /api/v1/search inside the caller's tenant."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

import psycopg
from fastapi import Depends, FastAPI, Query
from psycopg_pool import PoolTimeout
from pydantic import BaseModel

from services.common.auth import Principal, TokenVerifier
from services.common.db import Database
from services.common.errors import ProblemError
from services.common.http import create_app

from . import engine, query
from .morph import Analyser
from .settings import SearchSettings

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
    total: int
    next_cursor: str | None
    facets: FacetsOut


def result_to_response(result: engine.SearchResult) -> SearchOut:
    return SearchOut(
        hits=[
            HitOut(id=h.id, title=h.title, snippet=h.snippet, score=h.score,
                   tags=[TagScoreOut(tag=t.tag, score=t.score) for t in h.tags],
                   status=h.status, created_at=h.created_at)
            for h in result.hits
        ],
        total=result.total,
        next_cursor=result.next_cursor,
        facets=FacetsOut(tags=[FacetOut(tag=f.tag, count=f.count) for f in result.facets]),
    )


def build_app(settings: SearchSettings, db: Database, *, manage_db: bool = True,
              analyser: Analyser | None = None) -> FastAPI:
    """The search HTTP app. With `manage_db` its lifespan opens and closes `db`; the
    process entry point manages the pool itself because gRPC shares it. The lifespan also
    starts loading the Korean analyser; /readyz fails until it has loaded."""
    verifier = TokenVerifier(settings.public_key_path, settings.jwt_issuer, settings.jwt_audience)
    analyser = analyser or Analyser()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        analyser.start()
        try:
            if not manage_db:
                yield
                return
            await db.open()
            try:
                yield
            finally:
                await db.close()
        finally:
            await analyser.close()

    app = create_app(settings.service_name, title="doctag search",
                     readiness={"database": db.ping, "analyser": analyser.check}, lifespan=lifespan,
                     max_body_bytes=settings.max_request_bytes, api_docs=settings.api_docs)
    app.state.analyser = analyser

    @app.get("/api/v1/search", response_model=SearchOut, tags=["search"],
             summary="Ranked Korean full-text and tag search in the caller's department; snippets are HTML "
                     "with <mark> around matched words")
    async def search(
        q: str | None = Query(None, description=f"search text, up to {query.MAX_QUERY_CHARS} characters; "
                                                "ranked by BM25 over Korean morphemes, any word may match; "
                                                "\"exact phrase\", -word to exclude, OR accepted"),
        tag: list[str] = Query([], description="documents must carry every given tag"),
        pii: bool | None = Query(None, description="true: only documents in which personal data was found; "
                                                   "false: only documents without"),
        limit: int = Query(query.DEFAULT_LIMIT, description=f"hits per page, 1..{query.MAX_LIMIT}"),
        cursor: str | None = Query(None, description="next_cursor of the previous page of the same query"),
        principal: Principal = Depends(verifier),
    ) -> SearchOut:
        try:
            params = query.validate(q, tag, limit, cursor, pii)
        except query.QueryError as exc:
            raise ProblemError(422, exc.message, field=exc.field) from None
        try:
            engine.parse_tenant_id(principal.tenant_id)
        except ValueError:
            raise ProblemError(401, "the token's tenant is not valid", slug="invalid-token",
                               field="Authorization") from None
        try:
            result = await engine.search(db, principal.tenant_id, params)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            log.warning("database unavailable: %s", exc)
            raise ProblemError(503, "the search database is unavailable; try again shortly",
                               headers={"Retry-After": "5"}) from None
        return result_to_response(result)

    return app
