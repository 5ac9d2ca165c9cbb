"""The training worker's view of `models.training_jobs` (as `doctag_training`, across tenants).

Every write after the claim is fenced by (worker_id, attempts): a worker that lost its job (the
reaper gave it to another attempt while this one hung) cannot change it any more.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from services.common.db import Database


@dataclass(frozen=True)
class Claim:
    job_id: str
    tenant_id: str
    attempt: int
    max_attempts: int
    model_name: str
    dataset_versions: list[str]
    seed: int
    hyperparameters: dict[str, Any]
    timeout_s: int
    priority: str


@dataclass(frozen=True)
class Reaped:
    job_id: str
    state: str      # PENDING (retried) or FAILED
    priority: str
    attempts: int


class JobDb:
    def __init__(self, db: Database, worker_id: str) -> None:
        self.db = db
        self.worker_id = worker_id

    async def claim(self, job_id: str) -> Claim | None:
        """PENDING → VALIDATING for this worker (attempt + 1); None when the job is not waiting (done,
        cancelled, or running under a live heartbeat elsewhere: a duplicate message)."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE models.training_jobs SET state = 'VALIDATING', attempts = attempts + 1, worker_id = %s, "
                "heartbeat_at = now(), started_at = coalesce(started_at, now()), reason = NULL, "
                "progress = '{\"stage\": \"validating\"}'::jsonb "
                "WHERE id = %s AND state = 'PENDING' AND NOT cancel_requested "
                "RETURNING id, tenant_id, attempts, max_attempts, model_name, dataset_versions, seed, "
                "hyperparameters, timeout_s, priority", (self.worker_id, job_id))
            row = await cur.fetchone()
        if row is None:
            return None
        return Claim(str(row["id"]), str(row["tenant_id"]), row["attempts"], row["max_attempts"], row["model_name"],
                     [str(v) for v in row["dataset_versions"]], row["seed"], dict(row["hyperparameters"]),
                     row["timeout_s"], row["priority"])

    async def dataset_rows(self, claim: Claim) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
        """The approved versions' masked rows by task, and what the manifest names of each version.
        Raises ValueError when a version is no longer approved or its dataset was deleted."""
        by_task: dict[str, list[dict[str, Any]]] = {}
        described = []
        async with self.db.transaction() as conn:
            for version_id in claim.dataset_versions:
                cur = await conn.execute(
                    "SELECT v.id, v.version, v.status, v.content_sha256, v.dataset_id, d.task, d.name, d.deleted_at "
                    "FROM models.dataset_versions v JOIN models.datasets d ON d.id = v.dataset_id "
                    "WHERE v.id = %s", (version_id,))
                v = await cur.fetchone()
                if v is None or v["deleted_at"] is not None:
                    raise ValueError(f"dataset version {version_id} no longer exists")
                if v["status"] != "approved":
                    raise ValueError(f"dataset version {version_id} is {v['status']}, not approved")
                # Negative rows (a model tag a person removed: "not this label") are not given to the trainer:
                # it learns one label per text (softmax), so "not L" has no target; they are counted instead.
                cur = await conn.execute("SELECT title, text, label FROM models.dataset_rows WHERE version_id = %s "
                                         "AND NOT negative ORDER BY row_no", (version_id,))
                by_task.setdefault(v["task"], []).extend(await cur.fetchall())
                cur = await conn.execute("SELECT count(*) AS n FROM models.dataset_rows WHERE version_id = %s "
                                         "AND negative", (version_id,))
                negatives = await cur.fetchone()
                described.append({"id": str(v["id"]), "dataset_id": str(v["dataset_id"]), "dataset": v["name"],
                                  "task": v["task"], "version": v["version"],
                                  "content_sha256": v["content_sha256"].strip(),
                                  "negative_rows_unused": negatives["n"] if negatives else 0})
        return by_task, described

    async def set_state(self, claim: Claim, state: str, *, reason: str | None = None,
                        progress: dict[str, Any] | None = None, artifact_dir: str | None = None,
                        code_version: str | None = None, finished: bool = False) -> bool:
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE models.training_jobs SET state = %s, reason = coalesce(%s, reason), "
                "progress = coalesce(%s, progress), artifact_dir = coalesce(%s, artifact_dir), "
                "code_version = coalesce(%s, code_version), heartbeat_at = now(), "
                "finished_at = CASE WHEN %s THEN now() ELSE finished_at END "
                "WHERE id = %s AND worker_id = %s AND attempts = %s AND state IN ('VALIDATING', 'TRAINING') "
                "RETURNING id", (state, reason, Jsonb(progress) if progress is not None else None, artifact_dir,
                                 code_version, finished, claim.job_id, self.worker_id, claim.attempt))
            return await cur.fetchone() is not None

    async def heartbeat(self, claim: Claim, progress: dict[str, Any]) -> bool | None:
        """Records the heartbeat and progress; returns cancel_requested, or None when the job is no
        longer this worker's (reaped, or finished elsewhere)."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE models.training_jobs SET heartbeat_at = now(), progress = %s "
                "WHERE id = %s AND worker_id = %s AND attempts = %s AND state IN ('VALIDATING', 'TRAINING') "
                "RETURNING cancel_requested", (Jsonb(progress), claim.job_id, self.worker_id, claim.attempt))
            row = await cur.fetchone()
        return None if row is None else bool(row["cancel_requested"])

    async def log(self, claim: Claim, lines: list[str]) -> None:
        if not lines:
            return
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO models.training_job_logs (job_id, tenant_id, message) "
                "SELECT %s, %s, m FROM unnest(%s::text[]) AS u(m)", (claim.job_id, claim.tenant_id, lines))

    async def reap(self, heartbeat_timeout_s: float) -> list[Reaped]:
        """Jobs whose worker stopped beating: PENDING again while attempts remain, else FAILED."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE models.training_jobs SET "
                "state = CASE WHEN attempts < max_attempts AND NOT cancel_requested THEN 'PENDING' "
                "             WHEN cancel_requested THEN 'CANCELLED' ELSE 'FAILED' END, "
                "reason = CASE WHEN attempts < max_attempts AND NOT cancel_requested THEN "
                "  format('the training worker %%s stopped sending heartbeats (attempt %%s of %%s); retried', "
                "         worker_id, attempts, max_attempts) "
                "  WHEN cancel_requested THEN 'cancelled; its training worker had stopped' "
                "  ELSE format('the training worker stopped sending heartbeats on each of %%s attempts (last: %%s); "
                "              dead-lettered', attempts, worker_id) END, "
                "finished_at = CASE WHEN attempts < max_attempts AND NOT cancel_requested THEN NULL ELSE now() END, "
                "published_at = NULL, worker_id = NULL "
                "WHERE state IN ('VALIDATING', 'TRAINING') AND heartbeat_at < now() - make_interval(secs => %s) "
                "RETURNING id, state, priority, attempts", (heartbeat_timeout_s,))
            rows = await cur.fetchall()
        return [Reaped(str(r["id"]), r["state"], r["priority"], r["attempts"]) for r in rows]

    async def unpublished(self, older_than_s: float) -> list[tuple[str, str]]:
        """PENDING jobs with no confirmed publication (model-serving could not publish, or reaped)."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE models.training_jobs SET published_at = now() WHERE state = 'PENDING' AND NOT cancel_requested "
                "AND published_at IS NULL AND coalesce(heartbeat_at, created_at) < now() - make_interval(secs => %s) "
                "RETURNING id, priority", (older_than_s,))
            return [(str(r["id"]), r["priority"]) for r in await cur.fetchall()]

    async def fail_unclaimable(self, job_id: str, reason: str) -> None:
        """A message whose job crashed the worker on every delivery: FAILED (it goes to the dead-letter queue)."""
        async with self.db.transaction() as conn:
            await conn.execute("UPDATE models.training_jobs SET state = 'FAILED', reason = %s, finished_at = now() "
                               "WHERE id = %s AND state NOT IN ('READY', 'FAILED', 'CANCELLED')", (reason, job_id))


def describe(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
