"""Datasets in PostgreSQL (schema `models`, migration 0020): every query runs in the caller's tenant
transaction, so row-level security shows a tenant its own datasets and the shared ones only."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from services.common import audit
from services.common.auth import Principal
from services.common.db import Database, DictConnection

from .gate import GateResult, Record

RETENTION_DAYS = 90
ROWS_PER_INSERT = 5000
DATASET_COLUMNS = ("d.id, d.tenant_id, d.name, d.task, d.created_by_name, d.created_at, d.deleted_at, "
                   "(d.tenant_id IS NULL) AS shared")
VERSION_COLUMNS = ("v.id, v.version, v.content_sha256, v.source, v.format, v.rows, v.stats, v.status, "
                   "v.decided_by_name, v.decided_at, v.decision_note, v.created_by_name, v.created_at")


@dataclass(frozen=True)
class StoredVersion:
    row: dict[str, Any]
    created: bool


def actor(principal: Principal) -> str:
    return principal.username or principal.user_id


async def record_audit(conn: DictConnection, principal: Principal, action: str, details: dict[str, Any],
                       request_id: str | None) -> None:
    await audit.record(conn, action=action, actor_id=principal.user_id, actor_name=actor(principal),
                       request_id=request_id, details=details)


class DatasetStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, principal: Principal, *, name: str, task: str, shared: bool) -> dict[str, Any]:
        dataset_id = str(uuid.uuid4())
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            cur = await conn.execute(
                "INSERT INTO models.datasets (id, tenant_id, name, task, created_by, created_by_name) "
                "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                (dataset_id, None if shared else principal.tenant_id, name, task, principal.user_id,
                 actor(principal)))
            await cur.fetchone()
        found = await self.get(principal, dataset_id)
        assert found is not None
        return found

    async def get(self, principal: Principal, dataset_id: str, *, deleted: bool = False) -> dict[str, Any] | None:
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            cur = await conn.execute(f"SELECT {DATASET_COLUMNS} FROM models.datasets d WHERE d.id = %s "
                                     "AND (%s OR d.deleted_at IS NULL)", (dataset_id, deleted))
            return await cur.fetchone()

    async def add_version(self, principal: Principal, dataset: dict[str, Any], result: GateResult, *,
                          source: str, fmt: str, request_id: str | None) -> StoredVersion:
        """Stores the gated rows as the next version; the same content is the existing version."""
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            await conn.execute("SELECT 1 FROM models.datasets WHERE id = %s FOR UPDATE", (dataset["id"],))
            cur = await conn.execute(f"SELECT {VERSION_COLUMNS} FROM models.dataset_versions v "
                                     "WHERE v.dataset_id = %s AND v.content_sha256 = %s",
                                     (dataset["id"], result.content_sha256))
            existing = await cur.fetchone()
            if existing is not None:
                return StoredVersion(existing, False)
            cur = await conn.execute("SELECT coalesce(max(version), 0) + 1 AS n FROM models.dataset_versions "
                                     "WHERE dataset_id = %s", (dataset["id"],))
            row = await cur.fetchone()
            assert row is not None
            version_id = str(uuid.uuid4())
            await conn.execute(
                "INSERT INTO models.dataset_versions (id, dataset_id, tenant_id, version, content_sha256, source, "
                "format, rows, stats, report, status, created_by, created_by_name) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (version_id, dataset["id"], dataset["tenant_id"], row["n"], result.content_sha256, source, fmt,
                 len(result.rows), Jsonb(result.stats), Jsonb(result.report),
                 "blocked" if result.blocked else "pending", principal.user_id, actor(principal)))
            # COPY is refused under row-level security: arrays of a few thousand rows per INSERT instead.
            for begin in range(0, len(result.rows), ROWS_PER_INSERT):
                chunk = result.rows[begin:begin + ROWS_PER_INSERT]
                await conn.execute(
                    "INSERT INTO models.dataset_rows (version_id, tenant_id, row_no, title, text, label, negative) "
                    "SELECT %s, %s, n, t, x, l, g FROM unnest(%s::int[], %s::text[], %s::text[], %s::text[], "
                    "%s::boolean[]) AS u(n, t, x, l, g)",
                    (version_id, dataset["tenant_id"], list(range(begin + 1, begin + len(chunk) + 1)),
                     [r.title for r in chunk], [r.text for r in chunk], [r.label for r in chunk],
                     [r.negative for r in chunk]))
            await record_audit(conn, principal, audit.DATASET_CREATED,
                               {"dataset_id": str(dataset["id"]), "version": row["n"], "source": source,
                                "rows": len(result.rows), "content_sha256": result.content_sha256,
                                "blocked": result.blocked, "pii_masked": result.report.get("pii_masked", {})},
                               request_id)
            cur = await conn.execute(f"SELECT {VERSION_COLUMNS} FROM models.dataset_versions v WHERE v.id = %s",
                                     (version_id,))
            stored = await cur.fetchone()
            assert stored is not None
            return StoredVersion(stored, True)

    async def list_datasets(self, principal: Principal) -> list[dict[str, Any]]:
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            cur = await conn.execute(
                f"SELECT {DATASET_COLUMNS}, (SELECT to_jsonb(x) FROM (SELECT {VERSION_COLUMNS} "
                "FROM models.dataset_versions v WHERE v.dataset_id = d.id ORDER BY v.version DESC LIMIT 1) x) "
                "AS latest FROM models.datasets d WHERE d.deleted_at IS NULL ORDER BY d.created_at DESC, d.id")
            return list(await cur.fetchall())

    async def versions(self, principal: Principal, dataset_id: str) -> list[dict[str, Any]]:
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            cur = await conn.execute(f"SELECT {VERSION_COLUMNS} FROM models.dataset_versions v "
                                     "WHERE v.dataset_id = %s ORDER BY v.version", (dataset_id,))
            return list(await cur.fetchall())

    async def version(self, principal: Principal, dataset_id: str, version: int) -> dict[str, Any] | None:
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            cur = await conn.execute(f"SELECT {VERSION_COLUMNS}, v.report, v.tenant_id FROM models.dataset_versions v "
                                     "JOIN models.datasets d ON d.id = v.dataset_id "
                                     "WHERE v.dataset_id = %s AND v.version = %s AND d.deleted_at IS NULL",
                                     (dataset_id, version))
            return await cur.fetchone()

    async def decide(self, principal: Principal, dataset_id: str, version: int, *, approve: bool, note: str | None,
                     request_id: str | None) -> dict[str, Any]:
        status = "approved" if approve else "rejected"
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            cur = await conn.execute(
                "UPDATE models.dataset_versions SET status = %s, decided_by = %s, decided_by_name = %s, "
                "decided_at = now(), decision_note = %s WHERE dataset_id = %s AND version = %s AND status = 'pending' "
                "RETURNING id", (status, principal.user_id, actor(principal), note, dataset_id, version))
            if await cur.fetchone() is None:
                raise LookupError("not pending")
            await record_audit(conn, principal, audit.DATASET_APPROVED if approve else audit.DATASET_REJECTED,
                               {"dataset_id": dataset_id, "version": version, "note": note}, request_id)
        found = await self.version(principal, dataset_id, version)
        assert found is not None
        return found

    async def soft_delete(self, principal: Principal, dataset_id: str, request_id: str | None) -> bool:
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            cur = await conn.execute("UPDATE models.datasets SET deleted_at = now() WHERE id = %s "
                                     "AND deleted_at IS NULL RETURNING id", (dataset_id,))
            if await cur.fetchone() is None:
                return False
            await record_audit(conn, principal, audit.DATASET_DELETED,
                               {"dataset_id": dataset_id, "retention_days": RETENTION_DAYS}, request_id)
        return True

    async def purge_expired(self) -> int:
        """Removes datasets deleted more than RETENTION_DAYS ago (their versions and rows cascade)."""
        async with self.db.transaction() as conn:
            await conn.execute("SELECT set_config('app.system', 'on', true)")
            cur = await conn.execute("DELETE FROM models.datasets WHERE deleted_at < now() - make_interval(days => %s)",
                                     (RETENTION_DAYS,))
            return cur.rowcount

    async def feedback(self, principal: Principal, max_rows: int) -> list[Record]:
        """The tenant's documents with the tags people gave them, and (negative) the model's tags people
        removed from them (upload's training_feedback())."""
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            cur = await conn.execute("SELECT document_id, title, text_content, tag, negative FROM "
                                     "documents.training_feedback(%s)", (max_rows,))
            rows = await cur.fetchall()
        return [Record(i, r["text_content"], r["tag"], r["title"], r["negative"]) for i, r in enumerate(rows, 1)]
