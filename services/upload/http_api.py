"""Public HTTP API of the upload service (reached through the gateway)."""

import unicodedata
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from services.common import audit, cursors
from services.common.auth import Principal, TokenVerifier
from services.common.errors import ProblemError, problem_body

from .repository import SORTS, STATUSES
from .service import BulkUploadResult, DocumentNotFound, DocumentService, FileOutcome, require_writer

# Pages of extracted text, in characters: the default keeps an answer near 300 KB of UTF-8 Korean.
TEXT_PAGE_DEFAULT_CHARS = 100_000
TEXT_PAGE_MAX_CHARS = 1_000_000


def _document_id(raw: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise ProblemError(422, "the document id must be a UUID", field="id") from None


MAX_TAG_CHARS = 100


def clean_tag(raw: object) -> str:
    """A tag as a person typed it: NFC, trimmed, 1-100 characters, no control characters."""
    if not isinstance(raw, str):
        raise ProblemError(422, "tag must be a string", field="tag")
    tag = unicodedata.normalize("NFC", raw).strip()
    if not tag or len(tag) > MAX_TAG_CHARS:
        raise ProblemError(422, f"tag must be 1 to {MAX_TAG_CHARS} characters", field="tag")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in tag):
        raise ProblemError(422, "tag must not contain control characters", field="tag")
    return tag


# Cursors are signed and bound to the tenant and the filters of the listing (services/common/cursors.py).

def encode_cursor(key: tuple[Any, str], tenant: str, filters: Any = None) -> str:
    value = key[0].isoformat() if isinstance(key[0], datetime) else key[0]
    return cursors.seal({"c": value, "i": key[1]}, tenant=tenant, binding=["documents", filters])


def decode_cursor(cursor: str, tenant: str, filters: Any = None, sort: str = "newest") -> tuple[Any, str]:
    """The keyset (sort key, id) of a cursor; the binding includes the sort, so a cursor of one
    order is refused for another."""
    try:
        data = cursors.unseal(cursor, tenant=tenant, binding=["documents", filters])
        raw = data["c"]
        value: Any
        if sort in ("newest", "oldest"):
            value = datetime.fromisoformat(raw)
        elif sort == "title":
            value = str(raw)
        else:
            if not isinstance(raw, int) or isinstance(raw, bool):
                raise TypeError("the cursor's key is not a number")
            value = raw
        return value, str(uuid.UUID(data["i"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ProblemError(422, _cursor_detail(exc), field="cursor") from None


def encode_audit_cursor(key: tuple[datetime, int], tenant: str, filters: Any = None) -> str:
    return cursors.seal({"a": key[0].isoformat(), "i": key[1]}, tenant=tenant, binding=["audit", filters])


def decode_audit_cursor(cursor: str, tenant: str, filters: Any = None) -> tuple[datetime, int]:
    try:
        data = cursors.unseal(cursor, tenant=tenant, binding=["audit", filters])
        return datetime.fromisoformat(data["a"]), int(data["i"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ProblemError(422, _cursor_detail(exc), field="cursor") from None


def _cursor_detail(exc: Exception) -> str:
    return str(exc) if isinstance(exc, cursors.CursorError) else \
        "the cursor is not valid; use next_cursor from a previous page"


def parse_time(raw: str | None, field: str) -> datetime | None:
    """An ISO 8601 time (`2026-11-25T09:00:00Z`, `2026-11-25`); without a zone it is UTC."""
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ProblemError(422, f"{field} must be an ISO 8601 time such as 2026-11-25T09:00:00Z",
                           field=field) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


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


def file_result(outcome: FileOutcome) -> dict[str, Any]:
    """One file of a bulk upload: `status` is what a single-file upload of it would have answered."""
    if outcome.result is not None:
        result = outcome.result
        return {"filename": outcome.filename, "status": 200 if result.duplicate else 202,
                "document": {**result.document, "duplicate": result.duplicate}}
    problem = outcome.problem
    assert problem is not None  # an outcome has a result or a problem
    errors = [{"field": problem.field, "message": problem.detail}] if problem.field else None
    return {"filename": outcome.filename, "status": problem.status,
            "problem": problem_body(problem.status, problem.detail, slug=problem.slug, title=problem.title,
                                    errors=errors, extra=problem.extra)}


def bulk_body(result: BulkUploadResult, quota: dict[str, Any]) -> dict[str, Any]:
    results = [file_result(o) for o in result.outcomes]
    statuses = [r["status"] for r in results]
    queued, duplicates = statuses.count(202), statuses.count(200)
    return {"results": results,
            "summary": {"files": result.files, "queued": queued, "duplicates": duplicates,
                        "refused": result.files - queued - duplicates},
            "quota": {k: quota[k] for k in ("quota_bytes", "used_bytes", "available_bytes", "warning")}}


def build_router(service: DocumentService, verifier: TokenVerifier) -> APIRouter:
    router = APIRouter(prefix="/api/v1")
    Auth = Annotated[Principal, Depends(verifier)]

    async def writer(principal: Auth) -> Principal:
        require_writer(principal)  # before the body is read or validated
        return principal

    Writer = Annotated[Principal, Depends(writer)]

    @router.post("/documents", status_code=202,
                 summary="Upload a document (multipart field `file`, optional `title`), or several (`file` repeated)",
                 responses={200: {"description": "the tenant already has these bytes: the existing document, "
                                                 "`duplicate: true`, nothing charged or queued"},
                            207: {"description": "several `file` parts: `results` has one entry per file, in order, "
                                                 "`{filename, status, document | problem}`; each file stored or "
                                                 "refused on its own"}})
    async def upload(
        request: Request,
        principal: Writer,
        duplicate: Annotated[Literal["existing", "allow"], Query(
            description="`existing` (default): the same bytes answer with the tenant's existing document; "
                        "`allow`: store a separate copy")] = "existing",
    ) -> JSONResponse:
        result = await service.upload(principal, request.headers.get("content-type"), request.stream(),
                                      allow_duplicate=duplicate == "allow")
        if isinstance(result, BulkUploadResult):
            quota = await service.quota(principal.tenant_id)
            return JSONResponse(bulk_body(result, quota), status_code=207, headers=quota_headers(quota))
        doc = result.document
        return JSONResponse({**doc, "duplicate": result.duplicate, "quota": result.quota},
                            status_code=200 if result.duplicate else 202,
                            headers={"Location": f"/api/v1/documents/{doc['id']}", **quota_headers(result.quota)})

    @router.get("/documents", summary="The tenant's documents, newest first or in the order `sort`")
    async def list_documents(
        principal: Auth,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: str | None = None,
        status: str | None = None,
        tag: Annotated[str | None, Query(max_length=100)] = None,
        pii: Annotated[bool | None, Query(
            description="`true`: only documents with personal data found in their text; `false`: only those "
                        "without (documents not tagged yet count as without)")] = None,
        since: Annotated[str | None, Query(description="uploaded at or after this ISO 8601 time")] = None,
        until: Annotated[str | None, Query(description="uploaded before this ISO 8601 time")] = None,
        deleted: Annotated[bool, Query(description="`true`: the deleted documents not purged yet, with "
                                                   "`deleted_at` (restorable within the retention period)")] = False,
        sort: Annotated[str, Query(description="`newest` (default), `oldest`, `title` (A→Z, 가→하), `size` "
                                                "(largest first) or `status` (failed, processing, queued, "
                                                "tagged); a cursor belongs to its order")] = "newest",
    ) -> dict[str, Any]:
        if status is not None and status not in STATUSES:
            raise ProblemError(422, f"status must be one of {', '.join(STATUSES)}", field="status")
        if sort not in SORTS:
            raise ProblemError(422, f"sort must be one of {', '.join(SORTS)}", field="sort")
        since_at, until_at = parse_time(since, "since"), parse_time(until, "until")
        if since_at is not None and until_at is not None and since_at > until_at:
            raise ProblemError(422, "until must not be before since", field="until")
        filters = {"status": status, "tag": tag, "pii": pii, "deleted": deleted,
                   "since": since_at.isoformat() if since_at else None,
                   "until": until_at.isoformat() if until_at else None}
        if sort != "newest":  # (cursors of the default order stay valid as they were)
            filters["sort"] = sort
        after = decode_cursor(cursor, principal.tenant_id, filters, sort) if cursor else None
        items, next_key = await service.list(principal.tenant_id, limit=limit, after=after, status=status, tag=tag,
                                               pii=pii, since=since_at, until=until_at, deleted=deleted, sort=sort)
        return {"items": items,
                "next_cursor": encode_cursor(next_key, principal.tenant_id, filters) if next_key else None}

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

    @router.delete("/documents/{document_id}", status_code=204,
                   summary="Delete a document (restorable during the retention period), or purge it at once")
    async def delete_document(
        document_id: str,
        principal: Writer,
        purge: Annotated[bool, Query(description="remove the document, its text, tags and (unless another "
                                                 "document has the same bytes) its file at once, and free its "
                                                 "quota; tenant_admin or platform_admin only")] = False,
    ) -> Response:
        doc_id = _document_id(document_id)
        try:
            if purge:
                await service.purge(principal, doc_id)
            else:
                await service.delete(principal, doc_id)
        except DocumentNotFound:
            raise ProblemError(404, "no such document", field="id") from None
        return Response(status_code=204)

    @router.post("/documents/{document_id}/restore",
                 summary="Bring back a deleted document within the retention period",
                 responses={409: {"description": "the document is not deleted"},
                            410: {"description": "deleted longer ago than the retention period"}})
    async def restore_document(document_id: str, principal: Writer) -> dict[str, Any]:
        try:
            return await service.restore(principal, _document_id(document_id))
        except DocumentNotFound:
            raise ProblemError(404, "no such document", field="id") from None

    @router.post("/documents/{document_id}/tags", status_code=201,
                 summary="Add your own tag to a document (`source: user`; recorded in the audit log)")
    async def add_tag(document_id: str, principal: Writer,
                      body: Annotated[dict[str, Any], Body(examples=[{"tag": "예산"}])]) -> dict[str, Any]:
        doc_id = _document_id(document_id)
        try:
            return await service.add_tag(principal, doc_id, clean_tag(body.get("tag")))
        except DocumentNotFound:
            raise ProblemError(404, "no such document", field="id") from None

    @router.delete("/documents/{document_id}/tags/{tag:path}",
                   summary="Remove a tag of one source: a model's (remembered, so re-tagging does not bring it "
                           "back) or a person's; recorded in the audit log")
    async def remove_tag(document_id: str, tag: str, principal: Writer,
                         source: Annotated[Literal["model", "user"], Query(
                             description="which tag to remove: the model's or a person's")]) -> dict[str, Any]:
        doc_id = _document_id(document_id)
        try:
            return await service.remove_tag(principal, doc_id, clean_tag(tag), source)
        except DocumentNotFound:
            raise ProblemError(404, "no such document", field="id") from None

    @router.get("/audit", summary="Audit log, newest first: tenant_admin (own tenant), platform_admin and "
                                  "analyst (all)")
    async def audit_log(
        principal: Auth,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: str | None = None,
        actor: Annotated[str | None, Query(max_length=200, description="user id or username; `system` for "
                                                                        "the purge job")] = None,
        action: str | None = None,
        since: Annotated[str | None, Query(description="ISO 8601 time, inclusive")] = None,
        until: Annotated[str | None, Query(description="ISO 8601 time, exclusive")] = None,
    ) -> dict[str, Any]:
        if action is not None and action not in audit.ACTIONS:
            raise ProblemError(422, f"action must be one of {', '.join(audit.ACTIONS)}", field="action")
        since_at, until_at = parse_time(since, "since"), parse_time(until, "until")
        if since_at is not None and until_at is not None and since_at > until_at:
            raise ProblemError(422, "until must not be before since", field="until")
        filters = {"actor": actor, "action": action, "since": since, "until": until}
        after = decode_audit_cursor(cursor, principal.tenant_id, filters) if cursor else None
        items, next_key = await service.audit_log(principal, limit=limit, after=after, actor=actor, action=action,
                                                  since=since_at, until=until_at)
        return {"items": items,
                "next_cursor": encode_audit_cursor(next_key, principal.tenant_id, filters) if next_key else None}

    @router.get("/quota", summary="The tenant's storage quota and usage")
    async def get_quota(principal: Auth) -> JSONResponse:
        quota = await service.quota(principal.tenant_id)
        return JSONResponse(quota, headers=quota_headers(quota))

    return router
