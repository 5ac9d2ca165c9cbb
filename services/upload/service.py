"""Document use-cases shared by the HTTP API and the gRPC Documents API."""
from __future__ import annotations

import asyncio
import builtins
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services.common.amqp import DOCUMENT_UPLOADED, QUOTA_WARNING, message_id
from services.common.auth import Principal
from services.common.blobstore import BlobStore, BlobTooLarge
from services.common.context import current_request_id
from services.common.db import Database, DictConnection
from services.common.errors import ProblemError
from services.common.korean import analyze
from services.common.multipart import MultipartError, MultipartUpload

from . import repository as repo
from .file_types import UnsupportedFile, check_signature, clean_filename, file_type_for
from .settings import UploadSettings

log = logging.getLogger(__name__)


class DocumentNotFound(Exception):
    pass


class StaleVersion(Exception):
    pass


@dataclass(frozen=True)
class UploadResult:
    """What an upload produced: a new document, or (`duplicate`) the tenant's existing document
    with the same bytes; and the tenant's quota after it."""

    document: dict[str, Any]
    duplicate: bool
    quota: dict[str, Any]


@dataclass(frozen=True)
class TextPage:
    """Characters [offset, offset + len(text)) of a document's extracted text of total_chars."""

    text: str
    offset: int
    total_chars: int

    @property
    def next_offset(self) -> int | None:
        end = self.offset + len(self.text)
        return end if end < self.total_chars else None


@dataclass(frozen=True)
class Extraction:
    """What the tagging worker's extractor reported about a document's file; None: not known."""

    format: str | None = None       # the format it was read as: "pdf", "hwp", "txt" ...
    extractor: str | None = None    # module and library version: "pdf/pypdfium2 5.15.2"
    pages: int | None = None        # PDF pages
    sections: int | None = None     # HWP/HWPX sections


def quota_summary(quota_bytes: int, used_bytes: int, warning_percent: int) -> dict[str, Any]:
    """The API shape of a quota: `warning` once usage reaches warning_percent of it (never for a
    quota of 0 bytes, which holds nothing and whose uploads are refused with their own message)."""
    return {"quota_bytes": quota_bytes, "used_bytes": used_bytes,
            "available_bytes": max(quota_bytes - used_bytes, 0),
            "warning": quota_bytes > 0 and used_bytes * 100 >= quota_bytes * warning_percent}


def public_document(row: dict[str, Any], tags: list[dict[str, Any]]) -> dict[str, Any]:
    """The API shape of a document."""
    return {
        "id": str(row["id"]),
        "title": row["title"],
        "filename": row["filename"],
        "content_type": row["content_type"],
        "size_bytes": row["size_bytes"],
        "sha256": row["sha256"],
        "status": row["status"],
        "error": row["error"],
        "tags": [{"tag": t["tag"], "score": t["score"], "source": t["source"], "model_version": t["model_version"]}
                 for t in tags],
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
        "processed_at": _iso(row["processed_at"]),
        "extraction": _extraction(row),
    }


def _extraction(row: dict[str, Any]) -> dict[str, Any] | None:
    """{"format", "extractor", "pages", "sections"}, or None while nothing is known (not processed yet)."""
    values = {"format": row["detected_format"], "extractor": row["extractor"], "pages": row["page_count"],
              "sections": row["section_count"]}
    return values if any(v is not None for v in values.values()) else None


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


class DocumentService:
    def __init__(self, settings: UploadSettings, db: Database, blobs: BlobStore,
                 on_outbox_write: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.db = db
        self.blobs = blobs
        self.on_outbox_write = on_outbox_write

    # -- upload ----------------------------------------------------------------
    async def upload(self, principal: Principal, content_type: str | None, body: AsyncIterator[bytes], *,
                     allow_duplicate: bool = False) -> UploadResult:
        """Streams the multipart body to the blob store, then records the document atomically.

        Bytes the tenant already has (same SHA-256, a document not `failed`) answer with that
        document, charge nothing and queue nothing, unless `allow_duplicate` asks for a copy."""
        try:
            form = MultipartUpload(content_type)
        except MultipartError as exc:
            raise ProblemError(415 if exc.field == "Content-Type" else 400, str(exc), field=exc.field) from None
        incoming = self.blobs.begin(max_bytes=self.settings.max_upload_bytes)
        committed = False
        try:
            file_type, head = None, b""
            async for chunk in body:
                for piece in form.feed(chunk):
                    if file_type is None:
                        file_type = self._file_type(form.filename)
                    if len(head) < 8192:
                        head += piece[: 8192 - len(head)]
                    await asyncio.to_thread(incoming.write, piece)
            form.finish()
            if not form.file_seen:
                raise ProblemError(422, "a file is required in the multipart field 'file'", field="file")
            file_type = file_type or self._file_type(form.filename)
            if incoming.size == 0:
                raise ProblemError(422, "the file is empty", field="file")
            try:
                check_signature(file_type, head)
            except UnsupportedFile as exc:
                raise ProblemError(415, str(exc), field="file") from None
            await asyncio.to_thread(incoming.finish)
            filename = clean_filename(form.filename)
            title = self._title(form.fields.get("title"), filename)
            title_terms = await asyncio.to_thread(analyze, title)
            result = await self._record_upload(principal, incoming, filename, title, file_type.content_type,
                                               title_terms, allow_duplicate=allow_duplicate)
            # A duplicate's bytes are stored already: the incoming copy is discarded below.
            committed = not result.duplicate
            return result
        except BlobTooLarge as exc:
            raise ProblemError(413, f"the file is larger than the upload limit of {exc.limit} bytes", field="file",
                               extra={"max_bytes": exc.limit}) from None
        except MultipartError as exc:
            raise ProblemError(400, str(exc), field=exc.field) from None
        finally:
            if not committed:
                await asyncio.to_thread(incoming.discard)

    def _file_type(self, filename: str | None):  # type: ignore[no-untyped-def]
        name = clean_filename(filename)
        if not name:
            raise ProblemError(422, "the file part needs a file name (filename=...)", field="file")
        try:
            return file_type_for(name)
        except UnsupportedFile as exc:
            raise ProblemError(415, str(exc), field="file") from None

    def _title(self, raw: str | None, filename: str) -> str:
        title = (raw or "").strip() or os.path.splitext(filename)[0] or filename
        if len(title) > self.settings.max_title_chars:
            raise ProblemError(422, f"the title is longer than {self.settings.max_title_chars} characters",
                               field="title")
        if any(ord(c) < 32 and c not in "\t" for c in title):
            raise ProblemError(422, "the title contains control characters", field="title")
        return title

    async def _record_upload(self, principal: Principal, incoming: Any, filename: str, title: str,
                             content_type: str, title_terms: list[str], *, allow_duplicate: bool) -> UploadResult:
        size, sha = incoming.size, incoming.sha256
        doc_id = str(uuid.uuid4())
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            try:
                # The quota row's lock serialises the tenant's uploads, so the duplicate check is exact:
                # of two parallel uploads of the same bytes, the second sees the first's document.
                account = await repo.lock_quota(conn)
                if not allow_duplicate and (existing := await repo.find_duplicate(conn, sha)) is not None:
                    existing_id = str(existing["id"])
                    tags = await repo.tags_for(conn, [existing_id])
                    log.info("duplicate upload answered with the existing document",
                             extra={"document_id": existing_id, "size_bytes": size})
                    return UploadResult(public_document(existing, tags[existing_id]), True,
                                        self._quota_summary(account))
                usage = await repo.reserve_quota(conn, size)
            except repo.QuotaExceeded as exc:
                raise ProblemError(
                    507, f"the tenant's storage quota would be exceeded: {exc.used_bytes} of {exc.quota_bytes} bytes "
                    f"used, this file needs {exc.requested}", field="file", slug="quota-exceeded",
                    extra={"quota_bytes": exc.quota_bytes, "used_bytes": exc.used_bytes}) from None
            except repo.NoQuota:
                raise ProblemError(507, "no storage quota is configured for this tenant; ask an operator",
                                   slug="quota-exceeded", field="file") from None
            await repo.lock_blob(conn, principal.tenant_id, sha)
            row = await repo.insert_document(conn, {
                "id": doc_id, "title": title, "filename": filename, "content_type": content_type,
                "size_bytes": size, "sha256": sha, "title_terms": title_terms, "created_by": principal.user_id})
            payload = {
                "event": DOCUMENT_UPLOADED, "document_id": doc_id, "tenant_id": principal.tenant_id, "sha256": sha,
                "filename": filename, "content_type": content_type, "size_bytes": size,
                "uploaded_at": _iso(row["created_at"]), "request_id": current_request_id(),
            }
            await repo.insert_outbox(conn, DOCUMENT_UPLOADED, message_id(doc_id, sha), payload)
            await repo.insert_audit(conn, doc_id, principal.user_id, "document.uploaded", current_request_id(),
                                    {"filename": filename, "size_bytes": size, "sha256": sha})
            await self._track_quota_warning(conn, principal.tenant_id, usage, document_id=doc_id)
            # The blob reaches its final name before the row commits: a committed row always has its bytes.
            await asyncio.to_thread(incoming.commit, principal.tenant_id)
        log.info("document uploaded", extra={"document_id": doc_id, "size_bytes": size,
                                             "quota_used": usage["used_bytes"]})
        self.on_outbox_write()
        return UploadResult(public_document(row, []), False, self._quota_summary(usage))

    def _quota_summary(self, row: dict[str, Any]) -> dict[str, Any]:
        return quota_summary(row["quota_bytes"], row["used_bytes"], self.settings.quota_warning_percent)

    async def _track_quota_warning(self, conn: DictConnection, tenant_id: str, usage: dict[str, Any], *,
                                   document_id: str | None) -> bool:
        """Announces a crossing of the warning threshold once and re-arms when usage is below it again.

        Runs in the transaction that changed the usage, which holds the quota row's lock, so of
        many parallel uploads exactly one sees the crossing; the event goes through the outbox,
        so it is published if and only if the change commits. Returns whether it wrote one."""
        warning = self._quota_summary(usage)["warning"]
        if warning and usage["warned_at"] is None:
            await repo.set_quota_warned(conn, True)
            percent = self.settings.quota_warning_percent
            payload = {
                "event": QUOTA_WARNING, "tenant_id": tenant_id, "quota_bytes": usage["quota_bytes"],
                "used_bytes": usage["used_bytes"], "used_percent": usage["used_bytes"] * 100 // usage["quota_bytes"],
                "threshold_percent": percent, "document_id": document_id,
                "at": _iso(datetime.now(UTC)), "request_id": current_request_id(),
            }
            # One message id per crossing; a republished outbox row keeps it, so consumers can tell.
            await repo.insert_outbox(conn, QUOTA_WARNING, f"{tenant_id}:{QUOTA_WARNING}:{uuid.uuid4()}", payload)
            log.info("storage quota warning", extra={"used_bytes": usage["used_bytes"],
                                                     "quota_bytes": usage["quota_bytes"]})
            return True
        if not warning and usage["warned_at"] is not None:
            await repo.set_quota_warned(conn, False)
        return False

    # -- read ------------------------------------------------------------------
    async def get(self, tenant_id: str, document_id: str) -> dict[str, Any]:
        async with self.db.tenant_transaction(tenant_id) as conn:
            row = await repo.get_document(conn, document_id)
            if row is None:
                raise DocumentNotFound(document_id)
            tags = await repo.tags_for(conn, [document_id])
        return public_document(row, tags[document_id])

    async def list(self, tenant_id: str, *, limit: int, after: tuple[datetime, str] | None, status: str | None,
                   tag: str | None) -> tuple[list[dict[str, Any]], tuple[datetime, str] | None]:
        async with self.db.tenant_transaction(tenant_id) as conn:
            rows = await repo.list_documents(conn, limit=limit + 1, after=after, status=status, tag=tag)
            page = rows[:limit]
            tags = await repo.tags_for(conn, [str(r["id"]) for r in page])
        next_key = (page[-1]["created_at"], str(page[-1]["id"])) if len(rows) > limit else None
        return [public_document(r, tags[str(r["id"])]) for r in page], next_key

    async def content_info(self, tenant_id: str, document_id: str) -> dict[str, Any]:
        async with self.db.tenant_transaction(tenant_id) as conn:
            row = await repo.get_document(conn, document_id)
        if row is None or not self.blobs.exists(tenant_id, row["sha256"]):
            raise DocumentNotFound(document_id)
        return row

    async def text(self, tenant_id: str, document_id: str, *, offset: int, limit: int) -> TextPage:
        """A page of the extracted text (stored when the document was tagged), in characters."""
        async with self.db.tenant_transaction(tenant_id) as conn:
            row = await repo.text_page(conn, document_id, offset, limit)
        if row is None:
            raise DocumentNotFound(document_id)
        status = row["status"]
        if status != "tagged":
            detail = (f"the document has no extracted text: its processing failed (status {status})"
                      if status == "failed" else
                      f"the document is not tagged yet (status {status}); its text is available once it is tagged")
            raise ProblemError(409, detail, slug="document-not-tagged", extra={"document_status": status})
        total = row["total_chars"]
        if offset > total:
            raise ProblemError(422, f"offset {offset} is past the end of the text ({total} characters)",
                               field="offset", extra={"total_chars": total})
        return TextPage(row["text"], offset, total)

    async def quota(self, tenant_id: str) -> dict[str, Any]:
        async with self.db.tenant_transaction(tenant_id) as conn:
            row = await repo.quota(conn)
        if row is None:
            return {"tenant_id": tenant_id, **quota_summary(0, 0, self.settings.quota_warning_percent), "documents": 0}
        return {"tenant_id": tenant_id, **self._quota_summary(row), "documents": row["documents"]}

    # -- delete ----------------------------------------------------------------
    async def delete(self, principal: Principal, document_id: str) -> None:
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            row = await repo.delete_document(conn, document_id)
            if row is None:
                raise DocumentNotFound(document_id)
            usage = await repo.release_quota(conn, row["size_bytes"])
            announced = usage is not None and await self._track_quota_warning(
                conn, principal.tenant_id, usage, document_id=None)
            await repo.insert_audit(conn, document_id, principal.user_id, "document.deleted", current_request_id(),
                                    {"filename": row["filename"], "size_bytes": row["size_bytes"]})
        if announced:  # usage can still be above the threshold after a delete when the quota was lowered
            self.on_outbox_write()
        await self._drop_blob_if_unused(principal.tenant_id, row["sha256"])

    async def _drop_blob_if_unused(self, tenant_id: str, sha: str) -> None:
        """After the delete committed: remove the bytes unless another document of the tenant shares them.
        The advisory lock makes a concurrent upload of the same bytes either finish first (and keep the blob)
        or start after the removal (and write it again)."""
        async with self.db.tenant_transaction(tenant_id) as conn:
            await repo.lock_blob(conn, tenant_id, sha)
            if await repo.blob_references(conn, sha) == 0:
                await asyncio.to_thread(self.blobs.delete, tenant_id, sha)

    # -- tagging results (gRPC) ------------------------------------------------
    async def record_result(self, tenant_id: str, document_id: str, sha: str, outcome: str, *, text: str = "",
                            tags: builtins.list[dict[str, Any]] | None = None, error: str = "",
                            extraction: Extraction | None = None) -> tuple[str, bool]:
        """Applies a worker's report; returns (status after, whether anything changed). Idempotent.

        `extraction` is stored with a tagged or failed outcome (a processing one ignores it)."""
        title_terms: list[str] = []
        text_terms: list[str] = []
        if outcome == "tagged" and len(text) > self.settings.max_text_chars:
            log.warning("extracted text cut", extra={"document_id": document_id, "chars": len(text)})
            text = text[: self.settings.max_text_chars]
        async with self.db.tenant_transaction(tenant_id) as conn:
            row = await repo.get_document(conn, document_id)
            if row is None:
                raise DocumentNotFound(document_id)
            if row["sha256"] != sha:
                raise StaleVersion(f"document {document_id} now has content {row['sha256']}, not {sha}")
            status = row["status"]
        if status in repo.FINAL_STATUSES or (outcome == "processing" and status == "processing"):
            return status, False
        if outcome == "tagged":
            title_terms = await asyncio.to_thread(analyze, row["title"])
            text_terms = await asyncio.to_thread(analyze, text)
        async with self.db.tenant_transaction(tenant_id) as conn:
            row = await repo.get_document(conn, document_id, for_update=True)
            if row is None:
                raise DocumentNotFound(document_id)
            if row["sha256"] != sha:
                raise StaleVersion(f"document {document_id} changed while it was processed")
            if row["status"] in repo.FINAL_STATUSES:
                return row["status"], False
            if outcome == "processing":
                await repo.set_status(conn, document_id, "processing")
            elif outcome == "tagged":
                await repo.store_tagging_result(conn, document_id, text, tags or [],
                                                title_terms=title_terms, text_terms=text_terms)
            else:
                await repo.set_status(conn, document_id, "failed", error[:2000] or "processing failed")
            if outcome != "processing" and extraction is not None:
                await repo.set_extraction(conn, document_id, detected_format=extraction.format,
                                          extractor=extraction.extractor, page_count=extraction.pages,
                                          section_count=extraction.sections)
            await repo.insert_audit(conn, document_id, None, f"document.{outcome}", current_request_id(),
                                    {"error": error} if outcome == "failed" else
                                    {"tags": [t["tag"] for t in (tags or [])]} if outcome == "tagged" else {})
        return outcome, True
