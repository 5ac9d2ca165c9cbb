"""gRPC `doctag.v1.Documents`: how the tagging worker reads files and reports results.

No request field chooses the tenant (services/common/access.py decides who may call at all):
ReadContent and RecordTaggingResult act on the document, tenant and content version of the job
capability upload signed when it published the job; GetDocument acts in the tenant of the end
user's verified token. A `tenant_id` in the request must agree with that, or the call is refused.
"""
from __future__ import annotations

import re
import uuid

import grpc

from services.common import embeddings
from services.common.access import CAPABILITY_KEY, current_user, deny, metadata_value
from services.common.blobstore import CHUNK_SIZE
from services.common.capability import CapabilityVerifier, InvalidCapability, JobCapability
from services.common.context import tenant_id_var
from services.common.pb import documents_pb2 as pb
from services.common.pb import documents_pb2_grpc as pb_grpc

from .service import DocumentNotFound, DocumentService, Extraction, StaleVersion

# A kind is a short snake_case name (services/common/pii.py KINDS); unknown kinds are kept, so a
# newer worker's kinds are stored before upload knows them.
_PII_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")

_OUTCOMES = {
    pb.TAGGING_OUTCOME_PROCESSING: "processing",
    pb.TAGGING_OUTCOME_TAGGED: "tagged",
    pb.TAGGING_OUTCOME_FAILED: "failed",
}


SERVICE = "upload"
_METHOD = "/doctag.v1.Documents/"


async def _document_id(request, context: grpc.aio.ServicerContext) -> str:  # type: ignore[no-untyped-def]
    try:
        return str(uuid.UUID(request.document_id))
    except ValueError:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "document_id must be a UUID")
        raise AssertionError("unreachable: context.abort() raises") from None


async def _check_tenant_field(request, tenant_id: str, context: grpc.aio.ServicerContext,  # type: ignore[no-untyped-def]
                              method: str) -> None:
    """The request's tenant_id is not trusted; when given it must be the tenant the call acts in."""
    if request.tenant_id and request.tenant_id.lower() != tenant_id:
        await deny(context, SERVICE, method, "tenant", "tenant_id is not the tenant this call is authorised for")
    tenant_id_var.set(tenant_id)


async def _extraction(request, context: grpc.aio.ServicerContext) -> Extraction:  # type: ignore[no-untyped-def]
    """The request's extraction fields ("" and 0 mean not known → None), checked."""
    if len(request.detected_format) > 20 or len(request.extractor) > 200:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "detected_format or extractor is too long")
    if request.page_count < 0 or request.section_count < 0:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_count and section_count cannot be negative")
    return Extraction(format=request.detected_format or None, extractor=request.extractor or None,
                      pages=request.page_count or None, sections=request.section_count or None)


class DocumentsServicer(pb_grpc.DocumentsServicer):
    def __init__(self, service: DocumentService, capabilities: CapabilityVerifier) -> None:
        self.service = service
        self.capabilities = capabilities

    async def _capability(self, request, context: grpc.aio.ServicerContext,  # type: ignore[no-untyped-def]
                          method: str, *, sha256: str | None = None) -> tuple[JobCapability, str]:
        """The verified job capability for the requested document (and content version), and the document id."""
        document_id = await _document_id(request, context)
        try:
            cap = self.capabilities.verify_for(metadata_value(context, CAPABILITY_KEY), document_id, sha256=sha256)
        except InvalidCapability as exc:
            await deny(context, SERVICE, method, "capability", str(exc))
            raise AssertionError("unreachable") from None
        await _check_tenant_field(request, cap.tenant_id, context, method)
        return cap, document_id

    async def ReadContent(self, request, context):  # type: ignore[no-untyped-def]
        cap, document_id = await self._capability(request, context, _METHOD + "ReadContent")
        try:
            # A document deleted while queued is still read and tagged, so a restore brings it back whole.
            row = await self.service.content_info(cap.tenant_id, document_id, include_deleted=True)
        except DocumentNotFound:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"document {document_id} not found")
        if row["sha256"] != cap.sha256:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"document {document_id} has other content than this job's")
        tenant_id = cap.tenant_id
        first = True
        async for chunk in self.service.blobs.aiter_chunks(tenant_id, row["sha256"], CHUNK_SIZE):
            if first:
                yield pb.ContentChunk(data=chunk, filename=row["filename"], content_type=row["content_type"],
                                      size_bytes=row["size_bytes"], sha256=row["sha256"])
                first = False
            else:
                yield pb.ContentChunk(data=chunk)

    async def RecordTaggingResult(self, request, context):  # type: ignore[no-untyped-def]
        cap, document_id = await self._capability(request, context, _METHOD + "RecordTaggingResult",
                                                  sha256=request.content_sha256.lower())
        tenant_id = cap.tenant_id
        outcome = _OUTCOMES.get(request.outcome)
        if outcome is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "outcome must be PROCESSING, TAGGED or FAILED")
            raise AssertionError("unreachable: context.abort() raises")
        tags = []
        for t in request.tags:
            if not t.tag or len(t.tag) > 100 or not (0.0 <= t.score <= 1.0):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid tag {t.tag!r} / score {t.score}")
            tags.append({"tag": t.tag, "score": float(t.score), "model_name": t.model_name or None,
                         "model_version": t.model_version or None})
        pii: dict[str, int] = {}
        if len(request.pii_counts) > 32:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "at most 32 pii kinds")
        for kind, count in request.pii_counts.items():
            if not _PII_KIND.fullmatch(kind) or count < 0:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid pii count {kind!r}: {count}")
            if count:
                pii[kind] = int(count)
        if outcome == "failed" and not request.error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a failed outcome needs an error reason")
        extraction = await _extraction(request, context)
        embedding = None
        if outcome == "tagged" and request.embedding:
            try:
                embedding = embeddings.checked(request.embedding_model, request.embedding_version, request.embedding)
            except embeddings.InvalidEmbedding as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"embedding: {exc}")
        try:
            status, applied = await self.service.record_result(
                tenant_id, document_id, cap.sha256, outcome, text=request.text, tags=tags,
                error=request.error, pii=pii, extraction=extraction, embedding=embedding)
        except DocumentNotFound:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"document {document_id} not found")
        except StaleVersion as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return pb.RecordTaggingResultResponse(status=status, applied=applied)

    async def GetDocument(self, request, context):  # type: ignore[no-untyped-def]
        document_id = await _document_id(request, context)
        tenant_id = current_user().tenant_id
        await _check_tenant_field(request, tenant_id, context, _METHOD + "GetDocument")
        try:
            doc = await self.service.get(tenant_id, document_id)
        except DocumentNotFound:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"document {document_id} not found")
        return pb.Document(
            id=doc["id"], tenant_id=tenant_id, title=doc["title"], filename=doc["filename"],
            content_type=doc["content_type"], size_bytes=doc["size_bytes"], sha256=doc["sha256"],
            status=doc["status"], error=doc["error"] or "",
            tags=[pb.Tag(tag=t["tag"], score=t["score"], source=t["source"], model_version=t["model_version"] or "")
                  for t in doc["tags"]],
            created_at=doc["created_at"] or "", updated_at=doc["updated_at"] or "", pii_counts=doc["pii"])
