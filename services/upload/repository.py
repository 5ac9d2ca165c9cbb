"""SQL for the documents schema. Every function runs inside a tenant transaction
(`Database.tenant_transaction`), so row-level security scopes it to one tenant."""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

from services.common import api_quota
from services.common.db import DictConnection
from services.common.embeddings import Embedding
from services.common.korean import analyser_version

DOC_COLUMNS = ("id, tenant_id, title, filename, content_type, size_bytes, sha256, status, error, "
               "created_at, updated_at, processed_at, pii, deleted_at, deleted_by, "
               "detected_format, extractor, page_count, section_count, created_by, created_by_name")
STATUSES = ("queued", "processing", "tagged", "failed")
FINAL_STATUSES = ("tagged", "failed")


class QuotaExceeded(Exception):
    def __init__(self, quota_bytes: int, used_bytes: int, requested: int) -> None:
        super().__init__("storage quota exceeded")
        self.quota_bytes, self.used_bytes, self.requested = quota_bytes, used_bytes, requested


class NoQuota(Exception):
    """The tenant has no storage quota row (it was not created with `doctag tenant create`)."""


async def lock_quota(conn: DictConnection) -> dict[str, Any]:
    """Locks the tenant's quota row until the transaction ends, or raises NoQuota.

    Every upload of a tenant takes this lock first, so uploads of one tenant are serialised
    from here on: the duplicate check that follows sees every upload committed before it
    (READ COMMITTED takes a new snapshot per statement), and exactly one upload sees usage
    cross the warning threshold."""
    row = await (await conn.execute(
        "SELECT quota_bytes, used_bytes, warned_at FROM documents.quotas "
        "WHERE tenant_id = public.app_tenant_id() FOR UPDATE")).fetchone()
    if row is None:
        raise NoQuota()
    return row


async def reserve_quota(conn: DictConnection, size: int) -> dict[str, Any]:
    """Adds `size` to the tenant's usage if it fits, atomically (row lock), else raises."""
    row = await (await conn.execute(
        "UPDATE documents.quotas SET used_bytes = used_bytes + %s, updated_at = now() "
        "WHERE tenant_id = public.app_tenant_id() AND used_bytes + %s <= quota_bytes "
        "RETURNING quota_bytes, used_bytes, warned_at", (size, size))).fetchone()
    if row:
        return row
    current = await quota(conn)
    if current is None:
        raise NoQuota()
    raise QuotaExceeded(current["quota_bytes"], current["used_bytes"], size)


async def release_quota(conn: DictConnection, size: int) -> dict[str, Any] | None:
    """Subtracts `size` from the tenant's usage; returns the row after (None without a quota row)."""
    return await (await conn.execute(
        "UPDATE documents.quotas SET used_bytes = greatest(used_bytes - %s, 0), updated_at = now() "
        "WHERE tenant_id = public.app_tenant_id() RETURNING quota_bytes, used_bytes, warned_at",
        (size,))).fetchone()


async def set_quota_warned(conn: DictConnection, warned: bool) -> None:
    """Remembers (True) or forgets (False: re-armed) that the current threshold crossing was announced."""
    await conn.execute(
        "UPDATE documents.quotas SET warned_at = CASE WHEN %s THEN now() END "
        "WHERE tenant_id = public.app_tenant_id()", (warned,))


async def quota(conn: DictConnection) -> dict[str, Any] | None:
    return await (await conn.execute(
        "SELECT q.quota_bytes, q.used_bytes, q.warned_at, "
        "(SELECT count(*) FROM documents.documents WHERE deleted_at IS NULL) AS documents, "
        "(SELECT coalesce(sum(size_bytes), 0) FROM documents.documents WHERE deleted_at IS NOT NULL) "
        "AS deleted_bytes FROM documents.quotas q WHERE q.tenant_id = public.app_tenant_id()")).fetchone()


async def api_usage(conn: DictConnection, tenant_id: str, day: date, default_quota: int) -> dict[str, Any] | None:
    """The tenant's daily API quota and today's calls (counted by the gateway); None for a tenant
    the identity schema does not know."""
    return await (await conn.execute(api_quota.USAGE_SQL, {"tenant": tenant_id, "day": day,
                                                           "default": default_quota})).fetchone()


async def lock_blob(conn: DictConnection, tenant_id: str, sha256: str) -> None:
    """Serialises uploads and deletes of one blob (transaction-scoped advisory lock)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{tenant_id}:{sha256}",))


async def blob_references(conn: DictConnection, sha256: str) -> int:
    """Documents of the tenant with these bytes, soft-deleted ones included (they may be restored)."""
    row = await (await conn.execute(
        "SELECT count(*) AS n FROM documents.documents WHERE sha256 = %s", (sha256,))).fetchone()
    assert row is not None  # count(*) always returns a row
    return int(row["n"])


async def find_duplicate(conn: DictConnection, sha256: str) -> dict[str, Any] | None:
    """The tenant's oldest live document with these bytes that is not `failed` (RLS keeps other tenants'
    documents out). A failed document is no answer to an upload: the same bytes uploaded again,
    e.g. once model-serving is back, must be processed again. Nor is a deleted one: the uploader
    could not see it."""
    return await (await conn.execute(
        f"SELECT {DOC_COLUMNS} FROM documents.documents WHERE sha256 = %s AND status <> 'failed' "
        f"AND deleted_at IS NULL ORDER BY created_at, id LIMIT 1", (sha256,))).fetchone()


async def text_page(conn: DictConnection, document_id: str, offset: int, limit: int) -> dict[str, Any] | None:
    """Status, total length and characters [offset, offset + limit) of the extracted text, cut in
    PostgreSQL (substr and char_length count characters) so a long text is never read whole."""
    return await (await conn.execute(
        "SELECT status, coalesce(char_length(text_content), 0) AS total_chars, "
        "coalesce(substr(text_content, %s, %s), '') AS text FROM documents.documents "
        "WHERE id = %s AND deleted_at IS NULL",
        (offset + 1, limit, document_id))).fetchone()


async def insert_document(conn: DictConnection, doc: dict[str, Any]) -> dict[str, Any]:
    """Inserts a queued document and indexes its title (`doc["title_terms"]`, the analyser's terms);
    `doc["created_by_name"]` (the uploader's username) may be left out."""
    row = await (await conn.execute(
        f"INSERT INTO documents.documents (id, tenant_id, title, filename, content_type, size_bytes, sha256, "
        f"status, title_length, indexed_at, analyser_version, created_by, created_by_name) VALUES "
        f"(%(id)s, public.app_tenant_id(), %(title)s, %(filename)s, %(content_type)s, %(size_bytes)s, %(sha256)s, "
        f"'queued', %(title_length)s, now(), %(analyser_version)s, %(created_by)s, %(created_by_name)s) "
        f"RETURNING {DOC_COLUMNS}",
        {"created_by_name": None, **doc, "title_length": len(doc["title_terms"]),
         "analyser_version": analyser_version()})).fetchone()
    assert row is not None  # INSERT ... RETURNING returns the inserted row
    await write_postings(conn, doc["id"], "title", doc["title_terms"], replace=False)
    return row


# ------------------------------------------------------------------ search index (BM25 postings)
# One row per (document, field, term) with the term's frequency and the field's length; the
# length also goes to documents.{title,text}_length (set by the statement that writes the
# document), from which a trigger keeps the tenant's totals (documents.search_stats). Written
# in the same transaction as the document.

DELETE_TERMS_SQL = "DELETE FROM documents.document_terms WHERE document_id = %s AND field = %s"
INSERT_TERMS_SQL = (
    "INSERT INTO documents.document_terms (tenant_id, document_id, field, term, tf, field_length) "
    "SELECT public.app_tenant_id(), %s, %s, t.term, t.tf, %s FROM unnest(%s::text[], %s::int[]) AS t(term, tf)"
)
REINDEXED_SQL = ("UPDATE documents.documents SET title_length = %s, text_length = %s, indexed_at = now(), "
                 "analyser_version = %s WHERE id = %s")
UPSERT_EMBEDDING_SQL = (
    "INSERT INTO documents.document_embeddings (document_id, tenant_id, model, version, dim, vector) "
    "VALUES (%s, public.app_tenant_id(), %s, %s, %s, %s) ON CONFLICT (document_id) DO UPDATE SET "
    "model = EXCLUDED.model, version = EXCLUDED.version, dim = EXCLUDED.dim, vector = EXCLUDED.vector, "
    "updated_at = now()"
)


def term_frequencies(terms: Sequence[str]) -> tuple[list[str], list[int]]:
    """Distinct terms and how often each occurs, as two parallel lists (for unnest)."""
    counts = Counter(terms)
    return list(counts), list(counts.values())


async def write_postings(conn: DictConnection, document_id: str, field: str, terms: Sequence[str], *,
                         replace: bool) -> None:
    """The document's postings for `field` ('title' or 'text'); `replace` removes the old ones first."""
    if replace:
        await conn.execute(DELETE_TERMS_SQL, (document_id, field))
    distinct, tfs = term_frequencies(terms)
    if distinct:
        await conn.execute(INSERT_TERMS_SQL, (document_id, field, len(terms), distinct, tfs))


async def reindex_document(conn: DictConnection, document_id: str, title_terms: Sequence[str],
                           text_terms: Sequence[str]) -> None:
    """Rewrites both fields' postings and lengths (`doctag search reindex`)."""
    await write_postings(conn, document_id, "title", title_terms, replace=True)
    await write_postings(conn, document_id, "text", text_terms, replace=True)
    await conn.execute(REINDEXED_SQL, (len(title_terms), len(text_terms), analyser_version(), document_id))


async def write_embedding(conn: DictConnection, document_id: str, embedding: Embedding) -> None:
    """The document's passage embedding (replaces the one it had)."""
    await conn.execute(UPSERT_EMBEDDING_SQL, (document_id, embedding.model, embedding.version, embedding.dim,
                                              embedding.vector))


async def insert_outbox(conn: DictConnection, event_type: str, message_id: str, payload: dict[str, Any], *,
                       document_id: str | None = None) -> None:
    """`document_id` marks a tagging job: the relay counts it in flight until that document is final."""
    await conn.execute(
        "INSERT INTO documents.outbox (tenant_id, event_type, message_id, payload, document_id) "
        "VALUES (public.app_tenant_id(), %s, %s, %s, %s)",
        (event_type, message_id, json.dumps(payload, ensure_ascii=False), document_id))


async def get_document(conn: DictConnection, document_id: str, *, for_update: bool = False,
                       include_deleted: bool = False) -> dict[str, Any] | None:
    """The document, or None; a soft-deleted one only with `include_deleted` (the tagging worker's
    paths, so that a document deleted while queued is still tagged and comes back whole if restored)."""
    lock = " FOR UPDATE" if for_update else ""
    live = "" if include_deleted else " AND deleted_at IS NULL"
    return await (await conn.execute(
        f"SELECT {DOC_COLUMNS} FROM documents.documents WHERE id = %s{live}{lock}",
        (document_id,))).fetchone()


async def tags_for(conn: DictConnection, document_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {str(i): [] for i in document_ids}
    if not document_ids:
        return out
    rows = await (await conn.execute(
        "SELECT document_id, tag, score, source, model_name, model_version FROM documents.document_tags "
        "WHERE document_id = ANY(%s::uuid[]) ORDER BY score DESC, tag", (document_ids,))).fetchall()
    for r in rows:
        out[str(r["document_id"])].append(
            {"tag": r["tag"], "score": round(float(r["score"]), 4), "source": r["source"],
             "model_name": r["model_name"], "model_version": r["model_version"]})
    return out


# The orders of the documents list: name -> (SQL key expression, descending). Every order ends on
# the id, so the keyset (key, id) is unique and a page boundary never skips or repeats a row.
_STATUS_ORDER = "CASE status WHEN 'failed' THEN 0 WHEN 'processing' THEN 1 WHEN 'queued' THEN 2 ELSE 3 END"
SORTS: dict[str, tuple[str, bool]] = {
    "newest": ("created_at", True),
    "oldest": ("created_at", False),
    "title": ("lower(title)", False),  # case-insensitive; Hangul in code point order (가 → 힣)
    "size": ("size_bytes", True),
    "status": (_STATUS_ORDER, False),
}


def sort_key(row: dict[str, Any]) -> Any:
    """The value the row's order compares (selected as `sort_key` by list_documents; what a cursor carries)."""
    return row["sort_key"]


async def list_documents(conn: DictConnection, *, limit: int, after: tuple[Any, str] | None,
                         status: str | None, tag: str | None, pii: bool | None = None,
                         since: datetime | None = None, until: datetime | None = None,
                         deleted: bool = False, sort: str = "newest") -> list[dict[str, Any]]:
    """Live documents (or, with `deleted`, the deleted ones not purged yet) in the order `sort`
    (SORTS; newest first by default); keyset pagination on (sort key, id), `after` being the last
    row's (sort_key, id). `pii`: only documents with (True) or without (False) personal data found;
    `since` (inclusive) and `until` (exclusive): uploaded in that time range."""
    key, descending = SORTS[sort]
    where: list[str] = ["deleted_at IS NOT NULL" if deleted else "deleted_at IS NULL"]
    params: list[Any] = []
    if since is not None:
        where.append("created_at >= %s")
        params.append(since)
    if until is not None:
        where.append("created_at < %s")
        params.append(until)
    if after is not None:
        where.append(f"({key}, id) {'<' if descending else '>'} (%s, %s)")
        params += [after[0], after[1]]
    if status:
        where.append("status = %s")
        params.append(status)
    if tag:
        where.append("EXISTS (SELECT 1 FROM documents.document_tags t WHERE t.document_id = d.id AND t.tag = %s)")
        params.append(tag)
    if pii is not None:
        where.append("pii <> '{}'::jsonb" if pii else "pii = '{}'::jsonb")
    params.append(limit)
    direction = "DESC" if descending else "ASC"
    return await (await conn.execute(
        f"SELECT {DOC_COLUMNS}, {key} AS sort_key FROM documents.documents d WHERE {' AND '.join(where)} "
        f"ORDER BY {key} {direction}, id {direction} LIMIT %s",
        params)).fetchall()


async def soft_delete(conn: DictConnection, document_id: str, user_id: str) -> dict[str, Any] | None:
    """Marks a live document deleted; None when there is none (never existed, deleted, purged)."""
    return await (await conn.execute(
        f"UPDATE documents.documents SET deleted_at = now(), deleted_by = %s "
        f"WHERE id = %s AND deleted_at IS NULL RETURNING {DOC_COLUMNS}", (user_id, document_id))).fetchone()


async def restore(conn: DictConnection, document_id: str, retention: timedelta) -> dict[str, Any] | None:
    """Brings back a document deleted less than `retention` ago; None otherwise. The row lock of
    UPDATE orders it against a purge of the same row: whichever comes second finds nothing to do."""
    return await (await conn.execute(
        f"UPDATE documents.documents SET deleted_at = NULL, deleted_by = NULL "
        f"WHERE id = %s AND deleted_at IS NOT NULL AND deleted_at >= now() - %s RETURNING {DOC_COLUMNS}",
        (document_id, retention))).fetchone()


async def lock_for_purge(conn: DictConnection, document_id: str, *, expired_before: timedelta | None,
                         wait: bool = False) -> dict[str, Any] | None:
    """Locks the row to purge (deleted or not). The purge job skips a row another transaction holds
    (SKIP LOCKED: a purge on another replica, a restore), so two jobs never wait on or double-free
    the same row; an administrator's purge (`wait`) waits for it instead, then finds the row or
    nothing. With `expired_before` only a document deleted longer ago than that qualifies (checked
    again here: it may have been restored since it was listed)."""
    expired = "" if expired_before is None else " AND deleted_at IS NOT NULL AND deleted_at < now() - %s"
    params: tuple[Any, ...] = (document_id,) if expired_before is None else (document_id, expired_before)
    lock = "FOR UPDATE" if wait else "FOR UPDATE SKIP LOCKED"
    return await (await conn.execute(
        f"SELECT {DOC_COLUMNS} FROM documents.documents WHERE id = %s{expired} {lock}", params)).fetchone()


async def purge_document(conn: DictConnection, document_id: str) -> None:
    """Removes the row with its text; its tags go with it (ON DELETE CASCADE)."""
    await conn.execute("DELETE FROM documents.documents WHERE id = %s", (document_id,))


async def expired_deletions(conn: DictConnection, retention: timedelta, limit: int) -> list[dict[str, Any]]:
    """(tenant_id, document_id) of documents of every tenant deleted longer ago than `retention`
    (SECURITY DEFINER function of migration 0007: ids only, nothing else crosses tenants)."""
    return await (await conn.execute(
        "SELECT tenant_id, document_id FROM documents.expired_deletions(%s, %s)", (retention, limit))).fetchall()


async def enable_all_tenants_audit(conn: DictConnection) -> None:
    """Lets this transaction read every tenant's audit entries (policy `platform_admin_reads_all`,
    SELECT on audit_log only). Call only for a verified platform administrator."""
    await conn.execute("SELECT set_config('app.audit_all_tenants', 'on', true)")


async def audit_entries(conn: DictConnection, *, limit: int, after: tuple[datetime, int] | None, actor_id: str | None,
                        actor_name: str | None, action: str | None, since: datetime | None,
                        until: datetime | None) -> list[dict[str, Any]]:
    """Audit entries visible to the transaction (RLS), newest first; keyset pagination on (at, id)."""
    where, params = ["true"], []
    if after is not None:
        where.append("(at, id) < (%s, %s)")
        params += [after[0], after[1]]
    if actor_id is not None:
        where.append("actor_id = %s")
        params.append(actor_id)
    if actor_name is not None:
        where.append("actor_name = %s")
        params.append(actor_name)
    if action is not None:
        where.append("action = %s")
        params.append(action)
    if since is not None:
        where.append("at >= %s")
        params.append(since)
    if until is not None:
        where.append("at < %s")
        params.append(until)
    params.append(limit)
    return await (await conn.execute(
        "SELECT id, at, tenant_id, actor_id, actor_name, action, document_id, request_id, outcome, details "
        f"FROM documents.audit_log WHERE {' AND '.join(where)} ORDER BY at DESC, id DESC LIMIT %s",
        params)).fetchall()


async def set_status(conn: DictConnection, document_id: str, status: str, error: str | None = None) -> None:
    final = status in FINAL_STATUSES
    await conn.execute(
        "UPDATE documents.documents SET status = %s, error = %s, updated_at = now(), "
        "processed_at = CASE WHEN %s THEN now() ELSE processed_at END WHERE id = %s",
        (status, error, final, document_id))


async def set_extraction(conn: DictConnection, document_id: str, *, detected_format: str | None,
                         extractor: str | None, page_count: int | None, section_count: int | None) -> None:
    """What the worker's extractor reported about the file (None: not known)."""
    await conn.execute(
        "UPDATE documents.documents SET detected_format = %s, extractor = %s, page_count = %s, section_count = %s "
        "WHERE id = %s", (detected_format, extractor, page_count, section_count, document_id))


async def store_tagging_result(conn: DictConnection, document_id: str, text: str, tags: list[dict[str, Any]], *,
                               text_terms: Sequence[str], pii: dict[str, int] | None = None,
                               embedding: Embedding | None = None) -> None:
    """Text with its length in terms, personal-data counts, the text's postings (the title's were
    written at upload), the passage embedding (when the worker brought one) and the model's tags."""
    await conn.execute(
        "UPDATE documents.documents SET status = 'tagged', error = NULL, text_content = %s, text_length = %s, "
        "indexed_at = now(), analyser_version = %s, pii = %s, updated_at = now(), processed_at = now() "
        "WHERE id = %s",
        (text, len(text_terms), analyser_version(), json.dumps(pii or {}), document_id))
    await write_postings(conn, document_id, "text", text_terms, replace=True)
    if embedding is not None:
        await write_embedding(conn, document_id, embedding)
    await conn.execute("DELETE FROM documents.document_tags WHERE document_id = %s AND source = 'model'",
                       (document_id,))
    if tags:
        await conn.execute(
            "INSERT INTO documents.document_tags "
            "(tenant_id, document_id, tag, score, source, model_name, model_version) "
            "SELECT public.app_tenant_id(), %s, t.tag, t.score, 'model', t.model_name, t.model_version "
            "FROM unnest(%s::text[], %s::float8[], %s::text[], %s::text[]) "
            "AS t(tag, score, model_name, model_version) "
            # A tag a person removed from this document stays removed (migration 0015).
            "WHERE NOT EXISTS (SELECT 1 FROM documents.tag_rejections r WHERE r.document_id = %s AND r.tag = t.tag)",
            (document_id, [t["tag"] for t in tags], [t["score"] for t in tags],
             [t.get("model_name") for t in tags], [t.get("model_version") for t in tags], document_id))


# ------------------------------------------------------------------ user tag corrections (migration 0015)

async def add_user_tag(conn: DictConnection, document_id: str, tag: str, user_id: str) -> bool:
    """A person's own tag (`source` user, score 1); False when the document already has it from a
    person. Adding a tag the person had removed from the model's lifts that rejection."""
    await conn.execute("DELETE FROM documents.tag_rejections WHERE document_id = %s AND tag = %s", (document_id, tag))
    row = await (await conn.execute(
        "INSERT INTO documents.document_tags (tenant_id, document_id, tag, score, source, created_by) "
        "VALUES (public.app_tenant_id(), %s, %s, 1, 'user', %s) ON CONFLICT DO NOTHING RETURNING tag",
        (document_id, tag, user_id))).fetchone()
    return row is not None


async def remove_tag(conn: DictConnection, document_id: str, tag: str, source: str,
                     user_id: str) -> dict[str, Any] | None:
    """Removes one tag of one source; the removed row, or None when the document has no such tag.
    A removed model tag is remembered, so a later tagging result does not bring it back."""
    row = await (await conn.execute(
        "DELETE FROM documents.document_tags WHERE document_id = %s AND tag = %s AND source = %s "
        "RETURNING tag, score, source, model_name, model_version", (document_id, tag, source))).fetchone()
    if row is not None and source == "model":
        await conn.execute(
            "INSERT INTO documents.tag_rejections (tenant_id, document_id, tag, rejected_by) "
            "VALUES (public.app_tenant_id(), %s, %s, %s) ON CONFLICT DO NOTHING", (document_id, tag, user_id))
    return row
