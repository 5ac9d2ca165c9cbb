"""The training jobs screens (model-serving's `/api/v1/training-jobs`, a department's own jobs):
the list with each job's state, progress (stage, epoch and step, loss, elapsed, time left) and how
long ago its last heartbeat came, refreshed in place while a job is active (`/admin/training-jobs/live`,
polled by static/app.js like the tagging queue's numbers); a form that starts a job from approved
dataset versions; one job's attempts, evaluation, logs and cancellation. Over the per-user or
per-department limit the API answers 429, shown as a Korean sentence with its Retry-After."""
from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from . import messages
from .api import ApiError
from .core import Web, link, uuid_of
from .session import CSRF_FIELD, Session, csrf_ok

DEFAULT_MODEL = "doctag-tagger"
DEFAULT_SEED = 13
MAX_DATASETS_LISTED = 50
LOG_LINES = 1000
# The form's number fields and their types: hyper-parameters, but for `seed` (top level) and
# `timeout_min` (sent as `timeout_s`).
NUMBER_FIELDS: tuple[tuple[str, type[int] | type[float]], ...] = (
    ("epochs", int), ("tune_layers", int), ("max_windows", int), ("window_tokens", int),
    ("learning_rate", float), ("seed", int), ("timeout_min", int))
TOP_LEVEL = ("seed",)
JOB_FIELDS = ("dataset_versions", "model", "priority", *(name for name, _ in NUMBER_FIELDS))
# API fields the form names differently.
FIELD_ALIASES = {"timeout_s": "timeout_min"}


def job_view(job: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """What the screens show of a job, in words (also the live JSON: no logs, no datasets' text)."""
    progress = job.get("progress") or {}
    state = str(job.get("state"))
    stage = progress.get("stage")
    step, steps = progress.get("step"), progress.get("steps")
    percent = (round(100 * int(step) / int(steps)) if isinstance(step, int) and isinstance(steps, int) and steps
               else (100 if state == "READY" else None))
    where = []
    if progress.get("epoch") and progress.get("epochs"):
        where.append(f"에폭 {progress['epoch']}/{progress['epochs']}")
    if isinstance(step, int) and isinstance(steps, int):
        where.append(f"단계 {step:,}/{steps:,}")
    active = state in messages.JOB_ACTIVE_STATES
    return {"id": job["id"], "state": state, "state_label": messages.JOB_STATE_LABELS.get(state, state),
            "active": active, "stage": messages.STAGE_LABELS.get(str(stage), str(stage)) if stage else "-",
            "position": " · ".join(where) or "-", "percent": percent,
            "loss": f"{progress['loss']:.4f}" if isinstance(progress.get("loss"), int | float) else "-",
            "elapsed": messages.duration(progress.get("elapsed_s")),
            "eta": messages.duration(progress.get("eta_s")) if active else "-",
            "heartbeat": messages.age(job.get("heartbeat_at"), now) if active else "-",
            "attempts": f"{job.get('attempts', 0)}/{job.get('max_attempts', '-')}",
            "cancelling": bool(job.get("cancel_requested")) and active}


def parse_job_form(form: dict[str, Any], versions: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The API's body from the form, and a Korean sentence per field the page refuses itself."""
    errors: dict[str, str] = {}
    chosen = [v for v in (uuid_of(x) for x in versions) if v]
    if not chosen:
        errors["dataset_versions"] = "학습할 데이터셋 버전을 하나 이상 고르세요."
    body: dict[str, Any] = {"dataset_versions": chosen, "model": str(form.get("model") or DEFAULT_MODEL).strip(),
                            "priority": "urgent" if form.get("priority") == "urgent" else "routine"}
    hyper: dict[str, Any] = {}
    for name, kind in NUMBER_FIELDS:
        raw = str(form.get(name) or "").strip().replace(",", "")
        if not raw:
            continue
        try:
            value = kind(raw)
        except ValueError:
            errors[name] = "정수로 입력하세요." if kind is int else "숫자로 입력하세요 (예: 0.00003)."
            continue
        if name == "timeout_min":
            body["timeout_s"] = value * 60
        elif name in TOP_LEVEL:
            body[name] = value
        else:
            hyper[name] = value
    if hyper:
        body["hyperparameters"] = hyper
    return body, errors


def router(web: Web) -> APIRouter:
    r = APIRouter()

    call = web.call

    async def trainable(request: Request, session: Session) -> list[dict[str, Any]]:
        """Every approved version of the datasets this admin sees, newest dataset first."""
        listing = (await call(request, session, "GET", "/api/v1/datasets"))["datasets"][:MAX_DATASETS_LISTED]
        found = await asyncio.gather(*(call(request, session, "GET", f"/api/v1/datasets/{d['id']}")
                                       for d in listing), return_exceptions=True)
        out = []
        for dataset in found:
            if isinstance(dataset, ApiError) and dataset.status == 401:
                raise dataset
            if isinstance(dataset, BaseException):
                if not isinstance(dataset, ApiError):
                    raise dataset
                continue   # deleted meanwhile
            for v in reversed(dataset.get("versions") or []):
                if v.get("status") == "approved":
                    out.append({"id": v["id"], "version": v["version"], "rows": v.get("rows"),
                                "name": dataset["name"], "task": dataset["task"], "shared": dataset["shared"],
                                "dataset_id": dataset["id"]})
        return out

    async def jobs_page(request: Request, session: Session, *, status: int = 200, error: str | None = None,
                        errors: dict[str, str] | None = None, values: dict[str, Any] | None = None) -> Response:
        jobs: list[dict[str, Any]] = []
        versions: list[dict[str, Any]] = []
        problems = []
        try:
            jobs = (await call(request, session, "GET", "/api/v1/training-jobs"))["jobs"]
        except ApiError as exc:
            if exc.status == 401:
                raise
            problems.append(messages.problem_message(exc))
        try:
            versions = await trainable(request, session)
        except ApiError as exc:
            if exc.status == 401:
                raise
            problems.append(messages.problem_message(exc))
        now = datetime.now(UTC)
        rows = [{**j, "view": job_view(j, now)} for j in jobs]
        defaults = {"model": DEFAULT_MODEL, "priority": "routine", "seed": str(DEFAULT_SEED), "dataset_versions": []}
        return web.render(request, "training_jobs.html", session, status=status, jobs=rows, versions=versions,
                          error=error or (" ".join(dict.fromkeys(problems)) or None), errors=errors or {},
                          values={**defaults, **(values or {})}, active=any(j["view"]["active"] for j in rows))

    @r.get("/admin/training-jobs")
    async def jobs(request: Request) -> Response:
        session = web.session(request)
        if not session.is_tenant_admin:
            return web.refused(request, session, "부서 관리자 또는 플랫폼 관리자")
        return await jobs_page(request, session)

    @r.get("/admin/training-jobs/live")
    async def live(request: Request) -> Response:
        session = web.session(request)
        if not session.is_tenant_admin:
            return JSONResponse({"message": "관리자만 볼 수 있는 화면입니다."}, status_code=403)
        try:
            found = (await call(request, session, "GET", "/api/v1/training-jobs"))["jobs"]
        except ApiError as exc:
            if exc.status == 401:
                return JSONResponse({"login": True, "message": messages.FLASH["expired"]}, status_code=401)
            return JSONResponse({"message": messages.problem_message(exc)}, status_code=exc.status)
        now = datetime.now(UTC)
        views = [job_view(j, now) for j in found]
        return JSONResponse({"jobs": views, "active": any(v["active"] for v in views)},
                            headers={"Cache-Control": "no-store"})

    @r.post("/admin/training-jobs")
    async def start(request: Request) -> Response:
        session = web.session(request)
        raw = await request.form()
        form = {k: str(v) for k, v in raw.items()}
        if not csrf_ok(request, session, form.get(CSRF_FIELD)):
            return web.error_page(request, session, 403, messages.CSRF_REFUSED)
        versions = [str(v) for v in raw.getlist("dataset_versions")]
        values: dict[str, Any] = {**{k: form.get(k, "") for k in JOB_FIELDS}, "dataset_versions": versions}
        body, errors = parse_job_form(form, versions)
        if errors:
            return await jobs_page(request, session, status=422, errors=errors, values=values)
        try:
            job = await call(request, session, "POST", "/api/v1/training-jobs", json=body)
        except ApiError as exc:
            if exc.status == 401:
                raise
            errors, error = messages.form_errors(exc, JOB_FIELDS, FIELD_ALIASES)
            return await jobs_page(request, session, status=exc.status, errors=errors, error=error, values=values)
        return RedirectResponse(link(f"/admin/training-jobs/{job['id']}", {"msg": "job-started"}), status_code=303)

    @r.get("/admin/training-jobs/{job_id}")
    async def job(request: Request, job_id: str) -> Response:
        session = web.session(request)
        if not session.is_tenant_admin:
            return web.refused(request, session, "부서 관리자 또는 플랫폼 관리자")
        target = uuid_of(job_id)
        if target is None:
            return web.error_page(request, session, 404, messages.problem_message(404))
        found = await call(request, session, "GET", f"/api/v1/training-jobs/{target}")
        logs, logs_error = [], None
        try:
            logs = (await call(request, session, "GET", f"/api/v1/training-jobs/{target}/logs",
                               params={"limit": LOG_LINES}))["lines"]
        except ApiError as exc:
            if exc.status == 401:
                raise
            logs_error = messages.problem_message(exc)
        return web.render(request, "training_job.html", session, job=found, view=job_view(found), logs=logs,
                          logs_error=logs_error, log_limit=LOG_LINES)

    @r.post("/admin/training-jobs/{job_id}/cancel")
    async def cancel(request: Request, job_id: str) -> Response:
        session = web.session(request)
        form = await web.posted_form(request, session)
        if form is None:
            return web.error_page(request, session, 403, messages.CSRF_REFUSED)
        target = uuid_of(job_id)
        if target is None:
            return web.error_page(request, session, 404, messages.problem_message(404))
        try:
            await call(request, session, "POST", f"/api/v1/training-jobs/{target}/cancel")
        except ApiError as exc:
            if exc.status == 409:
                state = messages.JOB_STATE_LABELS.get(str(exc.problem.get("state")), "")
                return web.error_page(request, session, 409, f"이미 끝난 작업({state})이라 취소할 수 없습니다."
                                      if state else "이미 끝난 작업이라 취소할 수 없습니다.")
            raise
        back = "/admin/training-jobs" if form.get("back") == "list" else f"/admin/training-jobs/{target}"
        return RedirectResponse(link(back, {"msg": "job-cancelled"}), status_code=303)

    return r
