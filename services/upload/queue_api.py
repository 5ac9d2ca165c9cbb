"""HTTP API of the tagging queue (services/upload/tagging_queue.py), for administrators:
`GET /api/v1/tagging/queue` and `POST /api/v1/tagging/documents/{id}/retry`. The gateway's
`tagging` route lets tenant_admin and platform_admin through; the roles are checked here again."""

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from services.common.auth import Principal, TokenVerifier
from services.common.errors import ProblemError

from .tagging_queue import TaggingQueue


def _uuid(raw: str | None, field: str) -> str | None:
    if raw is None:
        return None
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise ProblemError(422, f"{field} must be a UUID", field=field) from None


def build_queue_router(queue: TaggingQueue, verifier: TokenVerifier) -> APIRouter:
    router = APIRouter(prefix="/api/v1/tagging", tags=["tagging queue"])
    Auth = Annotated[Principal, Depends(verifier)]
    TenantParam = Annotated[str | None, Query(description="platform_admin: one tenant's queue (default: every "
                                                          "tenant); tenant_admin: only its own")]

    @router.get("/queue", summary="Documents waiting, processing and failed, the tagging rate, dead-lettered jobs "
                                  "(and, for platform_admin, the broker's queue depths)")
    async def overview(principal: Auth, tenant_id: TenantParam = None) -> dict[str, Any]:
        return await queue.overview(principal, _uuid(tenant_id, "tenant_id"))

    @router.post("/documents/{document_id}/retry", status_code=202,
                 summary="Queue a failed, dead-lettered or stalled document's tagging job again (audited)")
    async def retry(document_id: str, principal: Auth, tenant_id: TenantParam = None) -> JSONResponse:
        doc_id = _uuid(document_id, "document_id")
        assert doc_id is not None
        result = await queue.retry(principal, doc_id, _uuid(tenant_id, "tenant_id"))
        return JSONResponse(result, status_code=202,
                            headers={"Location": f"/api/v1/documents/{doc_id}"})

    return router
