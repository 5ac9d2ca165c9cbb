"""Training jobs in PostgreSQL (`models.training_jobs`, migration 0020), in the caller's tenant."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb

from services.common import audit
from services.common.auth import Principal
from services.common.db import Database

from ..datasets.store import record_audit

ACTIVE = ("PENDING", "VALIDATING", "TRAINING", "EVALUATING")
TERMINAL = ("READY", "FAILED", "CANCELLED")
JOB_COLUMNS = ("id, state, reason, priority, model_name, dataset_versions, seed, hyperparameters, code_version, "
               "timeout_s, attempts, max_attempts, cancel_requested, progress, heartbeat_at, result_version, "
               "evaluation, created_by_name, created_at, started_at, finished_at")


class LimitReached(Exception):
    """Too many active jobs for the user or the tenant: answered 429 with Retry-After."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class DatasetNotTrainable(Exception):
    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


def job_out(row: dict[str, Any]) -> dict[str, Any]:
    """The public shape of a job: state, progress with elapsed and estimated remaining seconds."""
    progress = dict(row["progress"] or {})
    started = row["started_at"]
    end = row["finished_at"] or datetime.now(UTC)
    if started is not None:
        progress["elapsed_s"] = round((end - started).total_seconds(), 1)
    out = {k: row[k] for k in JOB_COLUMNS.split(", ")}
    out["id"] = str(row["id"])
    out["dataset_versions"] = [str(v) for v in row["dataset_versions"]]
    out["model"] = out.pop("model_name")
    out["progress"] = progress
    for key in ("heartbeat_at", "created_at", "started_at", "finished_at"):
        out[key] = out[key].isoformat() if out[key] is not None else None
    return out


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def submit(self, principal: Principal, *, model_name: str, dataset_versions: list[str], priority: str,
                     seed: int, hyperparameters: dict[str, Any], timeout_s: int, max_attempts: int,
                     max_per_user: int, max_per_tenant: int, request_id: str | None) -> dict[str, Any]:
        job_id = str(uuid.uuid4())
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            # One submission at a time per tenant, so the limits hold under concurrent requests.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('training-jobs:' || %s))",
                               (principal.tenant_id,))
            cur = await conn.execute(
                "SELECT count(*) FILTER (WHERE created_by = %s) AS mine, count(*) AS tenant "
                "FROM models.training_jobs WHERE state = ANY(%s)", (principal.user_id, list(ACTIVE)))
            counts = await cur.fetchone()
            assert counts is not None
            if counts["mine"] >= max_per_user:
                raise LimitReached(f"you have {counts['mine']} training jobs in progress; at most {max_per_user} "
                                   "at a time", max_per_user)
            if counts["tenant"] >= max_per_tenant:
                raise LimitReached(f"the department has {counts['tenant']} training jobs in progress; at most "
                                   f"{max_per_tenant} at a time (a fair share of the training host)", max_per_tenant)
            cur = await conn.execute(
                "SELECT v.id, v.status, d.deleted_at FROM models.dataset_versions v "
                "JOIN models.datasets d ON d.id = v.dataset_id WHERE v.id = ANY(%s::uuid[])", (dataset_versions,))
            found = {str(r["id"]): r for r in await cur.fetchall()}
            for version_id in dataset_versions:
                row = found.get(version_id)
                if row is None or row["deleted_at"] is not None:
                    raise DatasetNotTrainable(f"no dataset version {version_id}", 404)
                if row["status"] != "approved":
                    raise DatasetNotTrainable(f"dataset version {version_id} is {row['status']}; only approved "
                                              "versions are trainable")
            await conn.execute(
                "INSERT INTO models.training_jobs (id, tenant_id, created_by, created_by_name, model_name, "
                "dataset_versions, priority, seed, hyperparameters, timeout_s, max_attempts) "
                "VALUES (%s, %s, %s, %s, %s, %s::uuid[], %s, %s, %s, %s, %s)",
                (job_id, principal.tenant_id, principal.user_id, principal.username or principal.user_id, model_name,
                 dataset_versions, priority, seed, Jsonb(hyperparameters), timeout_s, max_attempts))
            await record_audit(conn, principal, audit.TRAINING_SUBMITTED,
                               {"job_id": job_id, "model": model_name, "dataset_versions": dataset_versions,
                                "priority": priority, "seed": seed}, request_id)
        found_job = await self.get(principal, job_id)
        assert found_job is not None
        return found_job

    async def mark_published(self, principal: Principal, job_id: str) -> None:
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            await conn.execute("UPDATE models.training_jobs SET published_at = now() WHERE id = %s", (job_id,))

    async def get(self, principal: Principal, job_id: str) -> dict[str, Any] | None:
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            cur = await conn.execute(f"SELECT {JOB_COLUMNS} FROM models.training_jobs WHERE id = %s", (job_id,))
            return await cur.fetchone()

    async def list_jobs(self, principal: Principal, limit: int = 100) -> list[dict[str, Any]]:
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            cur = await conn.execute(f"SELECT {JOB_COLUMNS} FROM models.training_jobs "
                                     "ORDER BY created_at DESC, id LIMIT %s", (limit,))
            return list(await cur.fetchall())

    async def logs(self, principal: Principal, job_id: str, after: int, limit: int) -> list[dict[str, Any]]:
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            cur = await conn.execute("SELECT id, at, message FROM models.training_job_logs WHERE job_id = %s "
                                     "AND id > %s ORDER BY id LIMIT %s", (job_id, after, limit))
            return list(await cur.fetchall())

    async def cancel(self, principal: Principal, job_id: str, request_id: str | None) -> dict[str, Any] | None:
        """PENDING ends CANCELLED at once; a running job is flagged and its worker stops it within a heartbeat."""
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            cur = await conn.execute(
                "UPDATE models.training_jobs SET "
                "state = CASE WHEN state = 'PENDING' THEN 'CANCELLED' ELSE state END, "
                "finished_at = CASE WHEN state = 'PENDING' THEN now() ELSE finished_at END, "
                "reason = CASE WHEN state = 'PENDING' THEN 'cancelled before it started' ELSE reason END, "
                "cancel_requested = true WHERE id = %s AND state IN ('PENDING', 'VALIDATING', 'TRAINING') "
                "RETURNING state", (job_id,))
            row = await cur.fetchone()
            if row is not None:
                await record_audit(conn, principal, audit.TRAINING_CANCELLED, {"job_id": job_id,
                                                                               "state": row["state"]}, request_id)
        return None if row is None else await self.get(principal, job_id)
