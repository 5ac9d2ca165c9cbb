"""The tagging queue as administrators see it, and retrying a job.

Upload owns the documents and the outbox, so it answers for the queue: documents waiting,
being processed and failed, the tagging rate, and (from the broker, dead_letters.py) how many
jobs wait in RabbitMQ and which were dead-lettered.

Scope: a tenant_admin sees its own tenant (RLS). A platform_admin sees every tenant (the
SELECT-only policy of migration 0018, switched on per transaction after the role check) or one
tenant by `tenant_id`, plus the broker's depths. Members get 403 (audited as denied).

Retry re-queues a document: `failed`, or `queued`/`processing` with a dead-lettered job or no
progress for the relay's in-flight timeout. It sets the document `queued`, writes a new job to
the outbox (the relay signs a fresh capability when it publishes it, so an expired one in the
dead letter does not matter), records `document.retried` in the document's tenant's audit log,
and then removes the document's dead letters from the dead-letter queue.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from services.common import audit
from services.common.amqp import DOCUMENT_UPLOADED, message_id
from services.common.auth import Principal
from services.common.context import current_request_id
from services.common.db import Database, DictConnection
from services.common.errors import ProblemError

from . import repository as repo
from .dead_letters import BROKER_ERRORS, DeadLetters
from .service import DocumentService, is_admin

log = logging.getLogger(__name__)

FAILED_LIMIT = 50
DEAD_LETTER_LIMIT = 50
RETRYABLE = ("failed", "queued", "processing")

_COUNTS = ("SELECT count(*) FILTER (WHERE status = 'queued') AS queued, "
           "count(*) FILTER (WHERE status = 'processing') AS processing, "
           "count(*) FILTER (WHERE status = 'failed') AS failed, min(created_at) FILTER (WHERE status = 'queued') "
           "AS oldest_queued_at FROM documents.documents WHERE deleted_at IS NULL AND status <> 'tagged'{tenant}")
_RATE = ("SELECT count(*) FILTER (WHERE status = 'tagged') AS tagged_last_hour, "
         "count(*) FILTER (WHERE status = 'failed') AS failed_last_hour, "
         "count(*) FILTER (WHERE status = 'tagged' AND processed_at >= now() - interval '10 minutes') "
         "AS tagged_last_10_minutes "
         "FROM documents.documents WHERE processed_at >= now() - interval '1 hour'{tenant}")
_FAILED = ("SELECT id, tenant_id, title, filename, error, processed_at, updated_at FROM documents.documents "
           "WHERE status = 'failed' AND deleted_at IS NULL{tenant} ORDER BY processed_at DESC NULLS LAST, id "
           "LIMIT %(limit)s")
_UNPUBLISHED = ("SELECT count(*) AS n FROM documents.outbox WHERE event_type = %(job)s AND sent_at IS NULL")
_REQUEUE = ("UPDATE documents.documents SET status = 'queued', error = NULL, updated_at = now() "
            "WHERE id = %s RETURNING " + repo.DOC_COLUMNS)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


class TaggingQueue:
    def __init__(self, service: DocumentService, db: Database, dead_letters: DeadLetters | None, *,
                 stalled_after_s: float) -> None:
        self.service = service
        self.db = db
        self.dead_letters = dead_letters
        self.stalled_after_s = stalled_after_s

    async def _scope(self, principal: Principal, tenant_id: str | None, action: str) -> str | None:
        """The one tenant the caller looks at, or None for every tenant (platform_admin only)."""
        if not is_admin(principal):
            await self.service.record_denied(principal, action)
            raise ProblemError(403, "only a tenant or platform administrator may see the tagging queue")
        platform = "platform_admin" in principal.roles
        if tenant_id is not None and tenant_id != principal.tenant_id and not platform:
            raise ProblemError(403, "only a platform_admin may look at another tenant's queue", field="tenant_id")
        if platform:
            return tenant_id
        return principal.tenant_id

    async def overview(self, principal: Principal, tenant_id: str | None = None) -> dict[str, Any]:
        scope = await self._scope(principal, tenant_id, audit.QUEUE_READ)
        everyone = "platform_admin" in principal.roles
        params: dict[str, Any] = {"tenant": scope, "limit": FAILED_LIMIT, "job": DOCUMENT_UPLOADED}
        only = " AND tenant_id = %(tenant)s" if scope is not None else ""
        async with self.db.tenant_transaction(scope or principal.tenant_id) as conn:
            if everyone:
                await conn.execute("SELECT set_config('app.queue_all_tenants', 'on', true)")
            counts = await (await conn.execute(_COUNTS.format(tenant=only), params)).fetchone()
            rate = await (await conn.execute(_RATE.format(tenant=only), params)).fetchone()
            failed = await (await conn.execute(_FAILED.format(tenant=only), params)).fetchall()
            unpublished = None
            if scope is not None:  # the outbox is readable for the transaction's own tenant only
                unpublished = (await (await conn.execute(_UNPUBLISHED, params)).fetchone() or {}).get("n")
        assert counts is not None and rate is not None
        broker, dead, broker_error = None, [], None
        if self.dead_letters is not None:
            try:
                if everyone:
                    depth = await self.dead_letters.depth()
                    broker = {"jobs_waiting": depth.jobs_waiting, "workers": depth.workers,
                              "dead_lettered": depth.dead_lettered}
                dead = await self.dead_letters.peek(tenant_id=scope, limit=DEAD_LETTER_LIMIT)
            except BROKER_ERRORS as exc:  # the page still shows what the database knows
                log.warning("could not read the broker", extra={"error": repr(exc)})
                broker_error = "RabbitMQ could not be reached"
        return {
            "scope": "tenant" if scope is not None else "platform", "tenant_id": scope,
            "documents": {"queued": counts["queued"], "processing": counts["processing"], "failed": counts["failed"],
                          "oldest_queued_at": _iso(counts["oldest_queued_at"]), "unpublished_jobs": unpublished},
            "rate": {"tagged_last_hour": rate["tagged_last_hour"], "failed_last_hour": rate["failed_last_hour"],
                     "tagged_per_minute": round(rate["tagged_last_10_minutes"] / 10, 1)},
            "broker": broker, "broker_error": broker_error,
            "failed": [{"id": str(r["id"]), "tenant_id": str(r["tenant_id"]), "title": r["title"],
                        "filename": r["filename"], "error": r["error"], "failed_at": _iso(r["processed_at"])}
                       for r in failed],
            "dead_letters": dead,
        }

    async def retry(self, principal: Principal, document_id: str, tenant_id: str | None = None) -> dict[str, Any]:
        scope = await self._scope(principal, tenant_id, audit.DOCUMENT_RETRIED)
        tenant = scope or principal.tenant_id
        dead = []
        if self.dead_letters is not None:
            try:
                dead = [d for d in await self.dead_letters.peek(tenant_id=tenant, limit=DEAD_LETTER_LIMIT)
                        if d["document_id"] == document_id]
            except BROKER_ERRORS as exc:
                log.warning("could not read the dead letters", extra={"error": repr(exc)})
        async with self.db.tenant_transaction(tenant) as conn:
            row = await repo.get_document(conn, document_id, for_update=True)
            if row is None:
                raise ProblemError(404, "no such document in this tenant", field="document_id")
            await self._check_retryable(conn, row, bool(dead))
            updated = await (await conn.execute(_REQUEUE, (document_id,))).fetchone()
            assert updated is not None
            sha = str(row["sha256"])
            payload = {"event": DOCUMENT_UPLOADED, "document_id": document_id, "tenant_id": tenant, "sha256": sha,
                       "filename": row["filename"], "content_type": row["content_type"],
                       "size_bytes": row["size_bytes"], "title": row["title"],
                       "uploaded_at": _iso(row["created_at"]), "request_id": current_request_id(), "retry": True}
            await repo.insert_outbox(conn, DOCUMENT_UPLOADED, message_id(document_id, sha), payload,
                                     document_id=document_id)
            await audit.record(conn, action=audit.DOCUMENT_RETRIED, actor_id=principal.user_id,
                               actor_name=principal.username or None, document_id=document_id,
                               request_id=current_request_id(),
                               details={"previous_status": row["status"], "error": (row["error"] or "")[:500],
                                        "dead_letters": len(dead)})
        self.service.on_outbox_write()
        removed = 0
        if dead and self.dead_letters is not None:
            try:
                removed = await self.dead_letters.remove(tenant_id=tenant, document_id=document_id)
            except BROKER_ERRORS as exc:  # the job is queued again all the same; the dead letter stays visible
                log.warning("could not remove the dead letters", extra={"error": repr(exc)})
        log.info("tagging job retried", extra={"document_id": document_id, "previous": row["status"]})
        return {"id": document_id, "tenant_id": tenant, "status": "queued", "previous_status": row["status"],
                "dead_letters_removed": removed}

    async def _check_retryable(self, conn: DictConnection, row: dict[str, Any], dead_lettered: bool) -> None:
        status = row["status"]
        if status not in RETRYABLE:
            raise ProblemError(409, f"the document is {status}; only failed or stalled documents are retried",
                               field="document_id", extra={"document_status": status})
        if status == "failed" or dead_lettered:
            return
        stalled = await (await conn.execute(
            "SELECT updated_at < now() - make_interval(secs => %s) AS stalled FROM documents.documents WHERE id = %s",
            (self.stalled_after_s, row["id"]))).fetchone()
        if not (stalled and stalled["stalled"]):
            raise ProblemError(409, f"the document is {status} and its job is still alive; retry it once it failed, "
                                    "was dead-lettered or stalled", field="document_id",
                               extra={"document_status": status})
