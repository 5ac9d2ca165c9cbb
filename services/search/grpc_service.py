"""gRPC doctag.v1.Search/Search on behalf of an end user: the tenant is the one of the user's token
(verified by services/common/access.py from the `authorization` metadata); a `tenant_id` in the
request must be that tenant or the call is refused.

Same validation and query function as the HTTP API. The proto carries tag names
only (no scores, status, dates or facets); those stay HTTP-only.
"""
from __future__ import annotations

import logging

import grpc
import psycopg
from psycopg_pool import PoolTimeout

from services.common.access import current_user, deny
from services.common.context import tenant_id_var
from services.common.db import Database
from services.common.pb import search_pb2, search_pb2_grpc

from . import engine, query
from .semantic import SemanticSearch

log = logging.getLogger(__name__)
SERVICE_NAME = "doctag.v1.Search"
# Validation names HTTP parameters; gRPC callers know the proto field names.
_PROTO_FIELDS = {"q": "query", "tag": "tags", "from": "uploaded_from", "to": "uploaded_to", "type": "file_types"}


class SearchServicer(search_pb2_grpc.SearchServicer):
    def __init__(self, db: Database, semantic: SemanticSearch | None = None) -> None:
        self.db = db
        self.semantic = semantic

    async def Search(self, request: search_pb2.SearchRequest,
                     context: grpc.aio.ServicerContext) -> search_pb2.SearchResponse:
        tenant = engine.parse_tenant_id(current_user().tenant_id)
        if request.tenant_id and request.tenant_id.lower() != tenant:
            await deny(context, "search", "/doctag.v1.Search/Search", "tenant",
                       "tenant_id is not the tenant of the user's token")
        tenant_id_var.set(tenant)
        try:
            params = query.validate(request.query, list(request.tags), request.limit or None,
                                    request.cursor or None, request.pii if request.HasField("pii") else None,
                                    uploaded_from=request.uploaded_from or None,
                                    uploaded_to=request.uploaded_to or None,
                                    types=list(request.file_types), sort=request.sort or None)
        except query.QueryError as exc:
            field = _PROTO_FIELDS.get(exc.field, exc.field)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {exc.message}")
        try:
            result = await engine.search(self.db, tenant, params, self.semantic)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            log.warning("database unavailable: %s", exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the search database is unavailable")
        return search_pb2.SearchResponse(
            hits=[
                search_pb2.SearchHit(id=h.id, title=h.title, snippet=h.snippet, score=h.score,
                                     tags=[t.tag for t in h.tags])
                for h in result.hits
            ],
            total=result.total,
            next_cursor=result.next_cursor or "",
            retrieval=result.retrieval,
            degraded_reason=result.degraded_reason or "",
            total_is_lower_bound=result.total_is_lower_bound,
            relaxed_phrases=list(result.relaxed_phrases),
        )


def add_to_server(server: grpc.aio.Server, db: Database, semantic: SemanticSearch | None = None) -> None:
    search_pb2_grpc.add_SearchServicer_to_server(  # type: ignore[no-untyped-call]
        SearchServicer(db, semantic), server)
