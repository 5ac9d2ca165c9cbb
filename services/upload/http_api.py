"""Public HTTP API of the upload service (reached through the gateway)."""

import base64
import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from services.common.auth import Principal, TokenVerifier
from services.common.errors import ProblemError

from .repository import STATUSES
from .service import DocumentNotFound, DocumentService

# Pages of extracted text, in characters: the default keeps an answer near 300 KB of UTF-8 Korean.
TEXT_PAGE_DEFAULT_CHARS = 100_000
TEXT_PAGE_MAX_CHARS = 1_000_000


def _document_id(raw: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise ProblemError(422, "the document id must be a UUID", field="id") from None


def encode_cursor(key: tuple[datetime, str]) -> str:
    raw = json.dumps({"c": key[0].isoformat(), "i": key[1]}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(data["c"]), str(uuid.UUID(data["i"]))
    except (ValueError, KeyError, TypeError):
        raise ProblemError(422, "the cursor is not valid; use next_cursor from a previous page",
                           field="cursor") from None


def content_disposition(filename: str) -> str:
    """RFC 6266: an ASCII fallback plus the UTF-8 name, so Korean names survive in every browser."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\;' else "_" for c in filename) or "document"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def quota_headers(quota: dict[str, Any]) -> dict[str, str]:
    """`X-Quota-Warning` while the tenant's usage is at or above the warning threshold."""
    if not quota["warning"]:
        return {}
    percent = quota["used_bytes"] * 100 // quota["quota_bytes"]
    return {"X-Quota-Warning": f"{percent}% of the storage quota is used"}


def build_router(service: DocumentService, verifier: TokenVerifier) -> APIRouter:
    router = APIRouter(prefix="/api/v1")
    Auth = Annotated[Principal, Depends(verifier)]

    @router.post("/documents", status_code=202, summary="Upload a document (multipart field `file`, optional `title`)",
                 responses={200: {"description": "the tenant already has these bytes: the existing document, "
                                                 "`duplicate: true`, nothing charged or queued"}})
    async def upload(
        request: Request,
        principal: Auth,
        duplicate: Annotated[Literal["existing", "allow"], Query(
            description="`existing` (default): the same bytes answer with the tenant's existing document; "
                        "`allow`: store a separate copy")] = "existing",
    ) -> JSONResponse:
        result = await service.upload(principal, request.headers.get("content-type"), request.stream(),
                                      allow_duplicate=duplicate == "allow")
        doc = result.document
        return JSONResponse({**doc, "duplicate": result.duplicate, "quota": result.quota},
                            status_code=200 if result.duplicate else 202,
                            headers={"Location": f"/api/v1/documents/{doc['id']}", **quota_headers(result.quota)})

    @router.get("/documents", summary="The tenant's documents, newest first")
    async def list_documents(
        principal: Auth,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: str | None = None,
        status: str | None = None,
        tag: Annotated[str | None, Query(max_length=100)] = None,
    ) -> dict[str, Any]:
        if status is not None and status not in STATUSES:
            raise ProblemError(422, f"status must be one of {', '.join(STATUSES)}", field="status")
        after = decode_cursor(cursor) if cursor else None
        items, next_key = await service.list(principal.tenant_id, limit=limit, after=after, status=status, tag=tag)
        return {"items": items, "next_cursor": encode_cursor(next_key) if next_key else None}

    @router.get("/documents/{document_id}", summary="One document with its status, tags and extraction metadata")
    async def get_document(document_id: str, principal: Auth) -> dict[str, Any]:
        try:
            return await service.get(principal.tenant_id, _document_id(document_id))
        except DocumentNotFound:
            raise ProblemError(404, "no such document", field="id") from None

    @router.get("/documents/{document_id}/content", summary="The original file")
    async def get_content(document_id: str, principal: Auth) -> Response:
        try:
            row = await service.content_info(principal.tenant_id, _document_id(document_id))
        except DocumentNotFound:
            raise ProblemError(404, "no such document", field="id") from None
        return StreamingResponse(
            service.blobs.aiter_chunks(principal.tenant_id, row["sha256"]),
            media_type=row["content_type"],
            headers={"Content-Disposition": content_disposition(row["filename"]),
                     "Content-Length": str(row["size_bytes"]), "ETag": f"\"{row['sha256']}\"",
                     "X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-store"},
        )

    @router.get("/documents/{document_id}/text", summary="The extracted text of a tagged document, page by page",
                response_class=PlainTextResponse)
    async def get_text(
        document_id: str,
        principal: Auth,
        offset: Annotated[int, Query(ge=0, description="first character")] = 0,
        limit: Annotated[int, Query(ge=1, le=TEXT_PAGE_MAX_CHARS,
                                    description="characters at most")] = TEXT_PAGE_DEFAULT_CHARS,
    ) -> Response:
        try:
            page = await service.text(principal.tenant_id, _document_id(document_id), offset=offset, limit=limit)
        except DocumentNotFound:
            raise ProblemError(404, "no such document", field="id") from None
        headers = {"X-Text-Length": str(page.total_chars), "X-Content-Type-Options": "nosniff",
                   "Cache-Control": "private, no-store"}
        if page.next_offset is not None:
            headers["X-Next-Offset"] = str(page.next_offset)
        return PlainTextResponse(page.text, headers=headers, media_type="text/plain; charset=utf-8")

    @router.delete("/documents/{document_id}", status_code=204, summary="Delete a document and its file")
    async def delete_document(document_id: str, principal: Auth) -> Response:
        try:
            await service.delete(principal, _document_id(document_id))
        except DocumentNotFound:
            raise ProblemError(404, "no such document", field="id") from None
        return Response(status_code=204)

    @router.get("/quota", summary="The tenant's storage quota and usage")
    async def get_quota(principal: Auth) -> JSONResponse:
        quota = await service.quota(principal.tenant_id)
        return JSONResponse(quota, headers=quota_headers(quota))

    return router
