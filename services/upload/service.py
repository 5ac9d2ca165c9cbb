"""Document use-cases shared by the HTTP API and the gRPC Documents API."""
from __future__ import annotations

import asyncio
import builtins
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from services.common import api_quota, audit
from services.common.amqp import DOCUMENT_UPLOADED, QUOTA_WARNING, message_id
from services.common.auth import Principal
from services.common.blobstore import BlobStore, BlobTooLarge, IncomingBlob
from services.common.context import current_request_id
from services.common.db import Database, DictConnection
from services.common.embeddings import Embedding
from services.common.errors import ProblemError
from services.common.korean import analyze
from services.common.multipart import FileEnd, FileStart, MultipartError, MultipartUpload

from . import quota_metrics
from . import repository as repo
from .file_types import FileType, UnsupportedFile, check_signature, clean_filename, file_type_for
from .settings import UploadSettings

log = logging.getLogger(__name__)


class DocumentNotFound(Exception):
    pass


class StaleVersion(Exception):
    pass


# Roles that may purge documents at once and read the audit log.
ADMIN_ROLES = ("tenant_admin", "platform_admin")
# Reads the audit data of every tenant; administers nothing.
ANALYST_ROLE = "analyst"


# Roles that may change documents (upload, delete, restore, tags); an analyst alone only reads.
WRITER_ROLES = ("user", *ADMIN_ROLES)


def is_admin(principal: Principal) -> bool:
    return any(role in ADMIN_ROLES for role in principal.roles)


def require_writer(principal: Principal) -> None:
    """403 for a caller whose roles do not allow changes (an analyst): upload refuses it itself,
    behind the gateway's acl, so a request that reaches the port some other way changes nothing."""
    if any(role in WRITER_ROLES for role in principal.roles):
        return
    role = ANALYST_ROLE if ANALYST_ROLE in principal.roles else (", ".join(principal.roles) or "none")
    raise ProblemError(403, f"the {role} role is read-only: it may not upload, delete, restore or change the tags "
                       f"of documents (needs one of {', '.join(WRITER_ROLES)})", extra={"role": role})


@dataclass(frozen=True)
class UploadResult:
    """What an upload produced: a new document, or (`duplicate`) the tenant's existing document
    with the same bytes; and the tenant's quota after it."""

    document: dict[str, Any]
    duplicate: bool
    quota: dict[str, Any]


@dataclass(frozen=True)
class FileOutcome:
    """One file of a bulk upload: what it produced, or the problem that refused it (nothing stored)."""

    filename: str | None
    result: UploadResult | None = None
    problem: ProblemError | None = None


@dataclass(frozen=True)
class BulkUploadResult:
    """A request with several files: one outcome per file part, in body order (the files past the
    per-request cap share one last outcome, `files_not_stored` of them)."""

    outcomes: list[FileOutcome]
    files: int  # file parts in the request, those past the cap included


class _IncomingFile:
    """A file part being streamed: its blob, first bytes and type, or the problem that refused it.

    After a problem the rest of the part is read and dropped, so the next file parts still count."""

    def __init__(self, filename: str | None, title_part: str | None) -> None:
        self.filename = filename
        self.title_part = title_part
        self.file_type: FileType | None = None
        self.blob: IncomingBlob | None = None
        self.head = b""
        self.problem: ProblemError | None = None
        self.recorded = False
        self.committed = False

    async def write(self, piece: bytes) -> None:
        if self.problem is not None or self.blob is None:
            return
        if len(self.head) < 8192:
            self.head += piece[: 8192 - len(self.head)]
        try:
            await asyncio.to_thread(self.blob.write, piece)
        except BlobTooLarge as exc:
            self.problem = ProblemError(413, f"the file is larger than the upload limit of {exc.limit} bytes",
                                        field="file", extra={"max_bytes": exc.limit})
            await self.discard()

    async def finish(self) -> None:
        """The part ended: checks size and signature, then flushes the blob to disk."""
        if self.problem is not None or self.blob is None or self.file_type is None:
            return
        if self.blob.size == 0:
            self.problem = ProblemError(422, "the file is empty", field="file")
        else:
            try:
                check_signature(self.file_type, self.head)
            except UnsupportedFile as exc:
                self.problem = ProblemError(415, str(exc), field="file")
        if self.problem is not None:
            await self.discard()
            return
        await asyncio.to_thread(self.blob.finish)

    async def discard(self) -> None:
        if self.blob is not None:
            blob, self.blob = self.blob, None
            await asyncio.to_thread(blob.discard)


async def _discard(*files: _IncomingFile | None) -> None:
    for incoming in files:
        if incoming is not None and not incoming.recorded:
            await incoming.discard()


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
        # Personal data found in the extracted text (matches per kind) and whether there is any.
        "pii": dict(row["pii"]),
        "has_pii": bool(row["pii"]),
        "extraction": _extraction(row),
        # Who uploaded it: user id, and the username at upload time (None for documents older than 0015
        # whose upload was not in the audit log).
        "uploaded_by": {"id": str(row["created_by"]) if row.get("created_by") else None,
                        "username": row.get("created_by_name")},
        # Set only in the list of deleted documents (`GET /api/v1/documents?deleted=true`).
        "deleted_at": _iso(row.get("deleted_at")),
    }


def public_audit_entry(row: dict[str, Any]) -> dict[str, Any]:
    """The API shape of an audit entry."""
    return {
        "id": str(row["id"]),
        "at": _iso(row["at"]),
        "tenant_id": str(row["tenant_id"]) if row["tenant_id"] else None,
        "actor": {"id": str(row["actor_id"]) if row["actor_id"] else None, "username": row["actor_name"]},
        "action": row["action"],
        "outcome": row["outcome"],
        "document_id": str(row["document_id"]) if row["document_id"] else None,
        "request_id": row["request_id"],
        "details": row["details"],
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
                     allow_duplicate: bool = False) -> UploadResult | BulkUploadResult:
        """Streams the multipart body to the blob store, then records each file atomically.

        One `file` part answers as it always did (an `UploadResult`, or a ProblemError for the
        whole request). Several `file` parts make a bulk upload (`BulkUploadResult`): each file is
        streamed, checked and committed on its own as soon as the next file part begins or the
        body ends, so a refused file costs nothing (no blob, row or quota) and does not undo the
        files before it; a `title` part applies to the file part after it. Only one file is held
        at a time (its blob on disk); files past `max_files_per_request` are read and discarded.

        Bytes the tenant already has (same SHA-256, a document not `failed`) answer with that
        document, charge nothing and queue nothing, unless `allow_duplicate` asks for a copy."""
        try:
            form = MultipartUpload(content_type, multiple_files=True)
        except MultipartError as exc:
            raise ProblemError(415 if exc.field == "Content-Type" else 400, str(exc), field=exc.field) from None
        cap = self.settings.max_files_per_request
        outcomes: builtins.list[FileOutcome] = []
        current: _IncomingFile | None = None  # the file part being streamed
        # The last file part that ended, not recorded yet: whether the request is a single upload
        # (title anywhere in the body, problems answer the request) is known only at the next file part.
        ended: _IncomingFile | None = None
        title_before: str | None = None  # a `title` part seen since the last file part began
        over_cap, over_cap_name = 0, None
        try:
            async for chunk in body:
                for event in form.feed_events(chunk):
                    if isinstance(event, bytes):
                        if current is not None:
                            await current.write(event)
                    elif isinstance(event, FileStart):
                        if ended is not None:  # a second file: bulk, the previous one is recorded now
                            outcomes.append(await self._record_file(principal, ended, ended.title_part,
                                                                    allow_duplicate=allow_duplicate))
                            ended = None
                        if form.files_seen > cap:
                            over_cap += 1
                            over_cap_name = over_cap_name or event.filename
                        else:
                            current = self._begin_file(event.filename, title_before)
                        title_before = None
                    elif isinstance(event, FileEnd):
                        if current is not None:
                            await current.finish()
                        ended, current = current, None
                    elif event.name == "title":
                        title_before = event.value
            form.finish()
        except MultipartError as exc:
            await _discard(current, ended)
            problem = ProblemError(400, str(exc), field=exc.field)
            if not outcomes:  # nothing stored: the request as a whole is refused, as before
                raise problem from None
            broken = current or ended
            outcomes.append(FileOutcome(broken.filename if broken else None, problem=problem))
            return BulkUploadResult(outcomes, form.files_seen)
        except BaseException:  # a client that went away, a database error: no blob stays behind
            await _discard(current, ended)
            raise
        if not form.file_seen:
            raise ProblemError(422, "a file is required in the multipart field 'file'", field="file")
        if form.files_seen == 1:
            assert ended is not None  # form.finish() checked that the body (and so the part) ended
            outcome = await self._record_file(principal, ended, form.fields.get("title"),
                                              allow_duplicate=allow_duplicate)
            if outcome.problem is not None:
                raise outcome.problem
            assert outcome.result is not None
            return outcome.result
        if ended is not None:
            if title_before is not None and ended.problem is None:
                ended.problem = ProblemError(
                    422, "in an upload of several files a title part must come before its file part", field="title")
            outcomes.append(await self._record_file(principal, ended, ended.title_part,
                                                    allow_duplicate=allow_duplicate))
        if over_cap:
            outcomes.append(FileOutcome(over_cap_name, problem=ProblemError(
                413, f"at most {cap} files are stored per request: this file and the {over_cap - 1} after it were "
                f"not stored; send them in another request", field="file", slug="too-many-files",
                extra={"max_files": cap, "files_not_stored": over_cap})))
        return BulkUploadResult(outcomes, form.files_seen)

    def _begin_file(self, filename: str | None, title_part: str | None) -> _IncomingFile:
        incoming = _IncomingFile(filename, title_part)
        try:
            incoming.file_type = self._file_type(filename)
        except ProblemError as exc:
            incoming.problem = exc  # its bytes are read and dropped
        else:
            incoming.blob = self.blobs.begin(max_bytes=self.settings.max_upload_bytes)
        return incoming

    async def _record_file(self, principal: Principal, incoming: _IncomingFile, raw_title: str | None, *,
                           allow_duplicate: bool) -> FileOutcome:
        """Records one complete file, or says why not; its blob is committed or discarded either way."""
        incoming.recorded = True
        try:
            if incoming.problem is not None:
                return FileOutcome(incoming.filename, problem=incoming.problem)
            assert incoming.blob is not None and incoming.file_type is not None
            filename = clean_filename(incoming.filename)
            try:
                title = self._title(raw_title, filename)
                title_terms = await asyncio.to_thread(analyze, title)
                result = await self._record_upload(principal, incoming.blob, filename, title,
                                                   incoming.file_type.content_type, title_terms,
                                                   allow_duplicate=allow_duplicate)
            except ProblemError as exc:
                return FileOutcome(incoming.filename, problem=exc)
            # A duplicate's bytes are stored already: the incoming copy is discarded below.
            incoming.committed = not result.duplicate
            return FileOutcome(incoming.filename, result=result)
        finally:
            if not incoming.committed:
                await incoming.discard()

    def _file_type(self, filename: str | None) -> FileType:
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

    async def _record_upload(self, principal: Principal, incoming: IncomingBlob, filename: str, title: str,
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
                    await self._audit(conn, principal, audit.DOCUMENT_DUPLICATE, existing_id,
                                      {"filename": filename, "size_bytes": size, "sha256": sha})
                    return UploadResult(public_document(existing, tags[existing_id]), True,
                                        self._quota_summary(account))
                usage = await repo.reserve_quota(conn, size)
            except repo.QuotaExceeded as exc:
                quota_metrics.observe(principal.tenant_id, exc.quota_bytes, exc.used_bytes)
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
                "size_bytes": size, "sha256": sha, "title_terms": title_terms, "created_by": principal.user_id,
                "created_by_name": principal.username or None})
            payload = {
                "event": DOCUMENT_UPLOADED, "document_id": doc_id, "tenant_id": principal.tenant_id, "sha256": sha,
                "filename": filename, "content_type": content_type, "size_bytes": size, "title": title,
                "uploaded_at": _iso(row["created_at"]), "request_id": current_request_id(),
            }
            await repo.insert_outbox(conn, DOCUMENT_UPLOADED, message_id(doc_id, sha), payload, document_id=doc_id)
            await self._audit(conn, principal, audit.DOCUMENT_UPLOADED, doc_id,
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
        quota_metrics.observe(tenant_id, usage["quota_bytes"], usage["used_bytes"])
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

    async def list(self, tenant_id: str, *, limit: int, after: tuple[Any, str] | None, status: str | None,
                   tag: str | None, pii: bool | None = None, since: datetime | None = None,
                   until: datetime | None = None, deleted: bool = False,
                   sort: str = "newest") -> tuple[list[dict[str, Any]], tuple[Any, str] | None]:
        """A page in the order `sort` and the keyset (sort key, id) of its last row when more follow."""
        async with self.db.tenant_transaction(tenant_id) as conn:
            rows = await repo.list_documents(conn, limit=limit + 1, after=after, status=status, tag=tag, pii=pii,
                                             since=since, until=until, deleted=deleted, sort=sort)
            page = rows[:limit]
            tags = await repo.tags_for(conn, [str(r["id"]) for r in page])
        next_key = (repo.sort_key(page[-1]), str(page[-1]["id"])) if len(rows) > limit else None
        return [public_document(r, tags[str(r["id"])]) for r in page], next_key

    async def content_info(self, tenant_id: str, document_id: str, *, include_deleted: bool = False) -> dict[str, Any]:
        """The row of a document whose bytes are stored. `include_deleted` for the tagging worker only."""
        async with self.db.tenant_transaction(tenant_id) as conn:
            row = await repo.get_document(conn, document_id, include_deleted=include_deleted)
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
        """Storage, and next to it the daily API usage counted by the gateway (`api`, null for a
        tenant the identity schema does not know)."""
        now = datetime.now(UTC)
        settings = self.settings
        async with self.db.tenant_transaction(tenant_id) as conn:
            row = await repo.quota(conn)
            calls = await repo.api_usage(conn, tenant_id, api_quota.quota_day(now, settings.api_quota_timezone),
                                         settings.api_daily_quota_default)
        api = None if calls is None else api_quota.usage_summary(
            int(calls["quota"]), int(calls["calls"]), now, settings.api_quota_timezone,
            settings.api_quota_warning_percent)
        if row is None:
            return {"tenant_id": tenant_id, **quota_summary(0, 0, settings.quota_warning_percent), "documents": 0,
                    "deleted_bytes": 0, "api": api}
        quota_metrics.observe(tenant_id, row["quota_bytes"], row["used_bytes"])
        return {"tenant_id": tenant_id, **self._quota_summary(row), "documents": row["documents"],
                "deleted_bytes": int(row["deleted_bytes"]), "api": api}

    # -- tag corrections (migration 0015) -------------------------------------------
    async def add_tag(self, principal: Principal, document_id: str, tag: str) -> dict[str, Any]:
        """A person's own tag on a live document, recorded in the audit log (training feedback)."""
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            row = await repo.get_document(conn, document_id, for_update=True)
            if row is None:
                raise DocumentNotFound(document_id)
            if await repo.add_user_tag(conn, document_id, tag, principal.user_id):
                model_tag = next((t for t in (await repo.tags_for(conn, [document_id]))[document_id]
                                  if t["tag"] == tag and t["source"] == "model"), None)
                await self._audit(conn, principal, audit.DOCUMENT_TAG_ADDED, document_id,
                                  {"tag": tag, "source": "user",
                                   "model_score": model_tag["score"] if model_tag else None})
            tags = await repo.tags_for(conn, [document_id])
        return public_document(row, tags[document_id])

    async def remove_tag(self, principal: Principal, document_id: str, tag: str, source: str) -> dict[str, Any]:
        """Removes a model's tag (remembered as rejected) or a person's; 404 naming `tag` when the
        document has no such tag from that source."""
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            row = await repo.get_document(conn, document_id, for_update=True)
            if row is None:
                raise DocumentNotFound(document_id)
            removed = await repo.remove_tag(conn, document_id, tag, source, principal.user_id)
            if removed is None:
                raise ProblemError(404, f"the document has no {source} tag {tag!r}", field="tag")
            await self._audit(conn, principal, audit.DOCUMENT_TAG_REMOVED, document_id,
                              {"tag": tag, "source": source, "score": round(float(removed["score"]), 4),
                               "model_name": removed["model_name"], "model_version": removed["model_version"]})
            tags = await repo.tags_for(conn, [document_id])
        return public_document(row, tags[document_id])

    # -- delete, restore, purge ---------------------------------------------------
    @property
    def retention(self) -> timedelta:
        return timedelta(days=self.settings.deleted_retention_days)

    async def delete(self, principal: Principal, document_id: str) -> None:
        """Soft delete: hidden at once from every read path and from search (row-level security of
        the search role), restorable for the retention period. The bytes stay charged to the quota
        until the purge, so a restore never needs space that may have been taken meanwhile."""
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            row = await repo.soft_delete(conn, document_id, principal.user_id)
            if row is None:
                raise DocumentNotFound(document_id)
            await self._audit(conn, principal, audit.DOCUMENT_DELETED, document_id,
                              {"filename": row["filename"], "size_bytes": row["size_bytes"],
                               "purge_after": _iso(row["deleted_at"] + self.retention)})

    async def restore(self, principal: Principal, document_id: str) -> dict[str, Any]:
        """Undoes a soft delete within the retention period. A document deleted longer ago (purge
        pending) raises 410; one that was never deleted 409; an unknown or purged one DocumentNotFound."""
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            row = await repo.restore(conn, document_id, self.retention)
            if row is not None:
                await self._audit(conn, principal, audit.DOCUMENT_RESTORED, document_id, {"filename": row["filename"]})
                tags = await repo.tags_for(conn, [document_id])
                return public_document(row, tags[document_id])
            current = await repo.get_document(conn, document_id, include_deleted=True)
        if current is None:
            raise DocumentNotFound(document_id)
        if current["deleted_at"] is None:
            raise ProblemError(409, "the document is not deleted", slug="document-not-deleted", field="id")
        raise ProblemError(410, f"the document was deleted more than {self.settings.deleted_retention_days} days "
                           "ago and can no longer be restored", slug="retention-expired", field="id")

    async def purge(self, principal: Principal, document_id: str) -> None:
        """Removes a document for good at once, deleted or not: tenant and platform admins only."""
        if not is_admin(principal):
            await self.record_denied(principal, audit.DOCUMENT_PURGED, document_id)
            raise ProblemError(403, "only a tenant or platform administrator may purge a document; "
                               "delete it without purge=true to move it to the deleted documents", field="purge")
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            # Waits for a concurrent restore or purge of the row; after a purge there is nothing left.
            row = await repo.lock_for_purge(conn, document_id, expired_before=None, wait=True)
            if row is None:
                raise DocumentNotFound(document_id)
            announced = await self._purge_locked(conn, principal.tenant_id, row)
            await self._audit(conn, principal, audit.DOCUMENT_PURGED, document_id,
                              {"filename": row["filename"], "size_bytes": row["size_bytes"],
                               "was_deleted": row["deleted_at"] is not None})
        if announced:
            self.on_outbox_write()
        await self._drop_blob_if_unused(principal.tenant_id, row["sha256"])

    async def purge_expired(self, *, limit: int) -> int:
        """One pass of the purge job: documents deleted longer ago than the retention, of every
        tenant. Safe with several replicas at once: each row is purged in its tenant's transaction
        under FOR UPDATE SKIP LOCKED, and the quota is freed in that same transaction, so exactly
        once. Returns how many documents this pass purged."""
        async with self.db.transaction() as conn:
            candidates = await repo.expired_deletions(conn, self.retention, limit)
        purged = 0
        for candidate in candidates:
            tenant_id, document_id = str(candidate["tenant_id"]), str(candidate["document_id"])
            async with self.db.tenant_transaction(tenant_id) as conn:
                row = await repo.lock_for_purge(conn, document_id, expired_before=self.retention)
                if row is None:  # purged by another replica, being purged, or restored meanwhile
                    continue
                announced = await self._purge_locked(conn, tenant_id, row)
                await audit.record(conn, action=audit.DOCUMENT_PURGED, actor_id=None, actor_name=audit.SYSTEM_ACTOR,
                                   document_id=document_id, request_id=current_request_id(),
                                   details={"filename": row["filename"], "size_bytes": row["size_bytes"],
                                            "deleted_at": _iso(row["deleted_at"]),
                                            "retention_days": self.settings.deleted_retention_days})
            purged += 1
            if announced:
                self.on_outbox_write()
            await self._drop_blob_if_unused(tenant_id, row["sha256"])
        return purged

    async def _purge_locked(self, conn: DictConnection, tenant_id: str, row: dict[str, Any]) -> bool:
        """Deletes the locked row (text and tags with it) and frees its quota, in the caller's
        transaction; the bytes are removed after commit. Returns whether a quota event was written.

        The quota row is locked before the DELETE (whose trigger locks the tenant's search_stats row):
        uploads take them in that order too, so the two never deadlock."""
        usage = await repo.release_quota(conn, row["size_bytes"])
        await repo.purge_document(conn, str(row["id"]))
        # Usage can still be above the threshold after a purge when the quota was lowered.
        return usage is not None and await self._track_quota_warning(conn, tenant_id, usage, document_id=None)

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
                            pii: dict[str, int] | None = None,
                            extraction: Extraction | None = None,
                            embedding: Embedding | None = None) -> tuple[str, bool]:
        """Applies a worker's report; returns (status after, whether anything changed). Idempotent.

        `embedding`: the text's passage embedding (tagged only, optional), stored for semantic search.

        `pii`: personal-data matches per kind in the text (tagged only), stored with it; `extraction`
        is stored with a tagged or failed outcome (a processing one ignores it)."""
        text_terms: list[str] = []
        if outcome == "tagged" and len(text) > self.settings.max_text_chars:
            log.warning("extracted text cut", extra={"document_id": document_id, "chars": len(text)})
            text = text[: self.settings.max_text_chars]
        async with self.db.tenant_transaction(tenant_id) as conn:
            row = await repo.get_document(conn, document_id, include_deleted=True)
            if row is None:
                raise DocumentNotFound(document_id)
            if row["sha256"] != sha:
                raise StaleVersion(f"document {document_id} now has content {row['sha256']}, not {sha}")
            status = row["status"]
        if status in repo.FINAL_STATUSES or (outcome == "processing" and status == "processing"):
            return status, False
        if outcome == "tagged":
            text_terms = await asyncio.to_thread(analyze, text)
        async with self.db.tenant_transaction(tenant_id) as conn:
            row = await repo.get_document(conn, document_id, for_update=True, include_deleted=True)
            if row is None:
                raise DocumentNotFound(document_id)
            if row["sha256"] != sha:
                raise StaleVersion(f"document {document_id} changed while it was processed")
            if row["status"] in repo.FINAL_STATUSES:
                return row["status"], False
            if outcome == "processing":
                await repo.set_status(conn, document_id, "processing")
            elif outcome == "tagged":
                await repo.store_tagging_result(conn, document_id, text, tags or [], text_terms=text_terms, pii=pii,
                                                embedding=embedding)
            else:
                await repo.set_status(conn, document_id, "failed", error[:2000] or "processing failed")
            if outcome != "processing" and extraction is not None:
                await repo.set_extraction(conn, document_id, detected_format=extraction.format,
                                          extractor=extraction.extractor, page_count=extraction.pages,
                                          section_count=extraction.sections)
            action = {"processing": audit.DOCUMENT_PROCESSING, "tagged": audit.DOCUMENT_TAGGED,
                      "failed": audit.DOCUMENT_FAILED}[outcome]
            await audit.record(
                conn, action=action, outcome=audit.FAILED if outcome == "failed" else audit.SUCCESS,
                actor_id=None, actor_name=audit.WORKER_ACTOR, document_id=document_id, request_id=current_request_id(),
                details={"error": error[:2000]} if outcome == "failed" else
                {"tags": [{"tag": t["tag"], "score": t["score"], "model_version": t.get("model_version")}
                          for t in (tags or [])], "pii": pii or {}} if outcome == "tagged" else {})
        if outcome in repo.FINAL_STATUSES:
            self.on_outbox_write()  # the job's tenant has a free dispatch slot: the relay publishes its next job
        return outcome, True

    # -- audit log ----------------------------------------------------------------
    async def _audit(self, conn: DictConnection, principal: Principal, action: str, document_id: str | None,
                     details: dict[str, Any] | None = None, *, outcome: str = audit.SUCCESS) -> None:
        await audit.record(conn, action=action, outcome=outcome, actor_id=principal.user_id,
                           actor_name=principal.username or None, document_id=document_id,
                           request_id=current_request_id(), details=details)

    async def record_denied(self, principal: Principal, action: str, document_id: str | None = None) -> None:
        """Records a refused request (403) in its own transaction, which commits although the request fails."""
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            await self._audit(conn, principal, action, document_id, {"roles": list(principal.roles)},
                              outcome=audit.DENIED)

    async def audit_log(self, principal: Principal, *, limit: int, after: tuple[datetime, int] | None,
                        actor: str | None, action: str | None, since: datetime | None,
                        until: datetime | None) -> tuple[builtins.list[dict[str, Any]], tuple[datetime, int] | None]:
        """Entries newest first: a tenant admin's own tenant (RLS), every tenant for a platform admin
        and for an analyst (read-only across tenants)."""
        analyst = ANALYST_ROLE in principal.roles
        if not (is_admin(principal) or analyst):
            await self.record_denied(principal, audit.AUDIT_READ)
            raise ProblemError(403, "only a tenant or platform administrator or an analyst may read the audit log")
        actor_id = actor_name = None
        if actor is not None:
            try:
                actor_id = str(uuid.UUID(actor))
            except ValueError:
                actor_name = actor
        all_tenants = "platform_admin" in principal.roles or analyst
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            if all_tenants:
                await repo.enable_all_tenants_audit(conn)
            rows = await repo.audit_entries(conn, limit=limit + 1, after=after, actor_id=actor_id,
                                            actor_name=actor_name, action=action, since=since, until=until)
        page = rows[:limit]
        next_key = (page[-1]["at"], int(page[-1]["id"])) if len(rows) > limit else None
        return [public_audit_entry(r) for r in page], next_key
