"""HTTP API of training jobs (tenant and platform admins; a job is its department's alone).

POST /api/v1/training-jobs               → 202 {"id", "state": "PENDING", ...} and Location
GET  /api/v1/training-jobs               the department's jobs, newest first
GET  /api/v1/training-jobs/{id}          state, reason, progress (stage, step, epoch, loss, elapsed_s, eta_s),
                                         heartbeat, attempts, result version and its evaluation
GET  /api/v1/training-jobs/{id}/logs     ?after=ID: the run's log lines
POST /api/v1/training-jobs/{id}/cancel   PENDING ends at once; a running job within a heartbeat

Over the per-user or per-department limit of jobs in progress: 429 problem+json with Retry-After.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from services.common.auth import Principal, TokenVerifier
from services.common.context import current_request_id
from services.common.errors import ProblemError

from ..api_access import reached, role_gate
from ..registry import check_name
from ..training_settings import TrainingApiSettings
from .store import DatasetNotTrainable, JobStore, LimitReached, job_out

log = logging.getLogger(__name__)
ADMIN_ROLES = frozenset({"platform_admin", "tenant_admin"})


class HyperParameters(BaseModel):
    """What a job may set; the rest is the training's defaults (services/model_training/config.py)."""

    model_config = ConfigDict(extra="forbid")
    epochs: int | None = Field(None, ge=1, le=20)
    tune_layers: int | None = Field(None, ge=0, le=12)
    max_windows: int | None = Field(None, ge=1, le=16)
    window_tokens: int | None = Field(None, ge=16, le=510)
    learning_rate: float | None = Field(None, gt=0, le=0.01)
    head_learning_rate: float | None = Field(None, gt=0, le=0.1)
    batch_docs: int | None = Field(None, ge=1, le=256)
    emb_scales: list[float] | None = Field(None, min_length=1, max_length=5)
    svm_c: float | None = Field(None, gt=0, le=100)
    min_df: int | None = Field(None, ge=1, le=100)


class JobBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset_versions: list[uuid.UUID] = Field(..., min_length=1, max_length=20)
    model: str = Field("doctag-tagger", description="registry name the result is registered under")
    priority: str = Field("routine", pattern="^(urgent|routine)$")
    seed: int = Field(13, ge=0, le=2**31 - 1)
    hyperparameters: HyperParameters = Field(default_factory=HyperParameters)
    timeout_s: int | None = Field(None, ge=1, le=7 * 24 * 3600)


Publish = Callable[[str, str], Awaitable[None]]


def build_jobs_router(current: Callable[[], JobStore], verifier: TokenVerifier, settings: TrainingApiSettings,
                      publish: Publish) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["training"])

    admin = role_gate(verifier, ADMIN_ROLES, "training jobs need the tenant_admin or platform_admin role")

    def store() -> JobStore:
        return reached(current)

    def job_id_of(value: str) -> str:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise ProblemError(404, "no such training job", field="id") from None

    @router.post("/training-jobs", status_code=202, summary="Start a training job (asynchronous)")
    async def submit(body: JobBody, principal: Principal = admin) -> JSONResponse:
        try:
            check_name(body.model)
        except Exception as exc:  # noqa: BLE001 - RegistryError with the rule
            raise ProblemError(422, str(exc), field="model") from None
        try:
            job = await store().submit(
                principal, model_name=body.model, dataset_versions=[str(v) for v in body.dataset_versions],
                priority=body.priority, seed=body.seed,
                hyperparameters=body.hyperparameters.model_dump(exclude_none=True),
                timeout_s=body.timeout_s or settings.training_default_timeout_s,
                max_attempts=settings.training_max_attempts, max_per_user=settings.training_max_active_per_user,
                max_per_tenant=settings.training_max_active_per_tenant, request_id=current_request_id())
        except LimitReached as exc:
            raise ProblemError(429, str(exc), slug="training-limit", title="Too many training jobs",
                               headers={"Retry-After": str(settings.training_retry_after_s)},
                               extra={"limit": exc.limit}) from None
        except DatasetNotTrainable as exc:
            raise ProblemError(exc.status, str(exc), field="dataset_versions") from None
        try:
            await publish(str(job["id"]), body.priority)
            await store().mark_published(principal, str(job["id"]))
        except Exception:
            log.warning("training job not published yet; the reaper will", extra={"job_id": str(job["id"])},
                        exc_info=True)
        return JSONResponse(job_out(job), status_code=202, headers={"Location": f"/api/v1/training-jobs/{job['id']}"})

    @router.get("/training-jobs", summary="The department's training jobs")
    async def list_jobs(principal: Principal = admin) -> dict[str, Any]:
        return {"jobs": [job_out(j) for j in await store().list_jobs(principal)]}

    @router.get("/training-jobs/{job_id}", summary="A training job's state and progress")
    async def get_job(job_id: str, principal: Principal = admin) -> dict[str, Any]:
        job = await store().get(principal, job_id_of(job_id))
        if job is None:
            raise ProblemError(404, "no such training job", field="id")
        return job_out(job)

    @router.get("/training-jobs/{job_id}/logs", summary="A training job's log lines")
    async def job_logs(job_id: str, after: int = Query(0, ge=0), limit: int = Query(500, ge=1, le=5000),
                       principal: Principal = admin) -> dict[str, Any]:
        jid = job_id_of(job_id)
        if await store().get(principal, jid) is None:
            raise ProblemError(404, "no such training job", field="id")
        rows = await store().logs(principal, jid, after, limit)
        return {"lines": [{"id": r["id"], "at": r["at"].isoformat(), "message": r["message"]} for r in rows],
                "next_after": rows[-1]["id"] if rows else after}

    @router.post("/training-jobs/{job_id}/cancel", summary="Cancel a training job")
    async def cancel(job_id: str, principal: Principal = admin) -> dict[str, Any]:
        jid = job_id_of(job_id)
        job = await store().cancel(principal, jid, current_request_id())
        if job is None:
            found = await store().get(principal, jid)
            if found is None:
                raise ProblemError(404, "no such training job", field="id")
            raise ProblemError(409, f"the job is {found['state']}; it can no longer be cancelled", field="id",
                               extra={"state": found["state"]})
        return job_out(job)

    return router
