"""The training datasets screens (model-serving's `/api/v1/datasets`): a department administrator
manages the department's datasets, a platform administrator the shared ones (and its own
department's). A dataset or a new version comes from an uploaded JSONL/CSV file (multipart, passed
on to the API as it came) or from the tags people added or corrected (`source: user`); a version's
quality-gate report is read, then approved or rejected with a reason. The API decides who may do
what; refusals are shown beside the field they name, with what was typed kept."""
from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import FormData, UploadFile

from . import messages
from .api import ApiError
from .core import Web, client_ip, link, uuid_of
from .session import CSRF_FIELD, Session, csrf_ok

SORTS = {"newest": "최신순", "name": "이름순", "rows": "행 수 많은 순", "status": "검토 대기 먼저"}
STATUS_ORDER = {"pending": 0, "blocked": 1, "approved": 2, "rejected": 3}
TASK = re.compile(r"^[a-z][a-z0-9_-]{0,40}$")   # the datasets API's own rule (eval_sets.TASK_RE)
CREATE_FIELDS = ("name", "task", "shared", "source", "file")
VERSION_FIELDS = ("source", "file")
MAX_FORM_FILES = 1


def sort_datasets(items: list[dict[str, Any]], sort: str) -> list[dict[str, Any]]:
    """The list in the chosen order (the API answers newest first and every dataset at once)."""
    def latest(d: dict[str, Any]) -> dict[str, Any]:
        return d.get("latest") or {}

    if sort == "name":
        return sorted(items, key=lambda d: (str(d.get("name", "")).casefold(), str(d.get("id"))))
    if sort == "rows":
        return sorted(items, key=lambda d: -int(latest(d).get("rows") or 0))
    if sort == "status":
        return sorted(items, key=lambda d: STATUS_ORDER.get(str(latest(d).get("status")), 9))
    return items


def router(web: Web) -> APIRouter:
    r = APIRouter()

    call = web.call

    # -- the list and a new dataset ---------------------------------------------------------
    async def list_page(request: Request, session: Session, *, sort: str = "newest", status: int = 200,
                        error: str | None = None, errors: dict[str, str] | None = None,
                        values: dict[str, str] | None = None) -> Response:
        items, load_error = [], None
        try:
            items = (await call(request, session, "GET", "/api/v1/datasets"))["datasets"]
        except ApiError as exc:
            if exc.status == 401:
                raise
            load_error = messages.problem_message(exc)
        sort = sort if sort in SORTS else "newest"
        defaults = {"task": "headlines", "source": "file", "shared": "true" if session.is_platform_admin else ""}
        return web.render(request, "training_datasets.html", session, status=status,
                          datasets=sort_datasets(items, sort), sort=sort, sorts=SORTS, error=error or load_error,
                          errors=errors or {}, values={**defaults, **(values or {})})

    @r.get("/admin/datasets")
    async def datasets(request: Request, sort: str = "newest") -> Response:
        session = web.session(request)
        if not session.is_tenant_admin:
            return web.refused(request, session, "부서 관리자 또는 플랫폼 관리자")
        return await list_page(request, session, sort=sort)

    async def send_version(request: Request, session: Session, path: str, form: FormData,
                           fields: dict[str, str]) -> dict[str, Any]:
        """POST the version's source to `path`: the users' tags as JSON, or the file as multipart."""
        if fields.get("source") == "user":
            body = {"source": "user", **({"name": fields["name"], "task": fields["task"]} if "name" in fields else {})}
            answer: dict[str, Any] = await call(request, session, "POST", path, json=body)
            return answer
        upload = form.get("file")
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise ApiError(422, {"errors": [{"field": "file"}]})
        data = {k: fields[k] for k in ("name", "task", "shared") if k in fields}
        answer = await call(request, session, "POST", path, data=data,
                            files={"file": (upload.filename, upload.file,
                                            upload.content_type or "application/octet-stream")})
        return answer

    def done(answer: dict[str, Any], dataset_id: str) -> Response:
        version = (answer.get("version") or {}).get("version")
        flash = "dataset-created" if answer.get("created", True) else "dataset-same"
        return RedirectResponse(link(f"/admin/datasets/{dataset_id}", {"version": version, "msg": flash}),
                                status_code=303)

    @r.post("/admin/datasets")
    async def create(request: Request) -> Response:
        session = web.session(request)
        form = await request.form(max_files=MAX_FORM_FILES, max_fields=20)
        try:
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            if not csrf_ok(request, session, fields.get(CSRF_FIELD)):
                return web.error_page(request, session, 403, messages.CSRF_REFUSED)
            values = {"name": fields.get("name", "").strip(), "task": fields.get("task", "").strip(),
                      "source": "user" if fields.get("source") == "user" else "file",
                      "shared": "true" if fields.get("shared") == "true" else ""}
            errors = {}
            if not 1 <= len(values["name"]) <= 100:
                errors["name"] = "이름은 1~100자로 입력하세요."
            if not TASK.match(values["task"]):
                errors["task"] = "과제는 영문 소문자로 시작하는 이름입니다 (예: headlines)."
            if errors:
                return await list_page(request, session, status=422, errors=errors, values=values)
            sent = {"name": values["name"], "task": values["task"], "source": values["source"],
                    "shared": "true" if values["shared"] else "false"}
            try:
                answer = await send_version(request, session, "/api/v1/datasets", form, sent)
            except ApiError as exc:
                if exc.status == 401:
                    raise
                shown = CREATE_FIELDS if session.is_platform_admin else tuple(f for f in CREATE_FIELDS if f != "shared")
                errors, error = messages.form_errors(exc, shown)
                return await list_page(request, session, status=exc.status, errors=errors, error=error,
                                       values=values)
        finally:
            await form.close()
        return done(answer, str(answer["dataset"]["id"]))

    # -- one dataset: versions, a version's gate report, review --------------------------------
    async def dataset_page(request: Request, session: Session, dataset_id: str, version: int | None, *,
                           status: int = 200, error: str | None = None, errors: dict[str, str] | None = None,
                           values: dict[str, str] | None = None) -> Response:
        dataset = await call(request, session, "GET", f"/api/v1/datasets/{dataset_id}")
        versions = dataset.get("versions") or []
        numbers = [v["version"] for v in versions]
        chosen = version if version in numbers else (numbers[-1] if numbers else None)
        detail = None
        if chosen is not None:
            detail = await call(request, session, "GET", f"/api/v1/datasets/{dataset_id}/versions/{chosen}")
        manageable = not dataset.get("shared") or session.is_platform_admin
        return web.render(request, "training_dataset.html", session, status=status, dataset=dataset,
                          versions=list(reversed(versions)), v=detail, manageable=manageable, error=error,
                          errors=errors or {}, values={"source": "file", **(values or {})})

    @r.get("/admin/datasets/{dataset_id}")
    async def dataset(request: Request, dataset_id: str, version: int | None = None) -> Response:
        session = web.session(request)
        if not session.is_tenant_admin:
            return web.refused(request, session, "부서 관리자 또는 플랫폼 관리자")
        target = uuid_of(dataset_id)
        if target is None:
            return web.error_page(request, session, 404, messages.problem_message(404))
        return await dataset_page(request, session, target, version)

    @r.post("/admin/datasets/{dataset_id}/versions")
    async def new_version(request: Request, dataset_id: str) -> Response:
        session = web.session(request)
        form = await request.form(max_files=MAX_FORM_FILES, max_fields=20)
        try:
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            if not csrf_ok(request, session, fields.get(CSRF_FIELD)):
                return web.error_page(request, session, 403, messages.CSRF_REFUSED)
            target = uuid_of(dataset_id)
            if target is None:
                return web.error_page(request, session, 404, messages.problem_message(404))
            source = "user" if fields.get("source") == "user" else "file"
            try:
                answer = await send_version(request, session, f"/api/v1/datasets/{target}/versions", form,
                                            {"source": source})
            except ApiError as exc:
                if exc.status in (401, 404):
                    raise
                errors, error = messages.form_errors(exc, VERSION_FIELDS)
                return await dataset_page(request, session, target, None, status=exc.status, errors=errors,
                                          error=error, values={"source": source})
        finally:
            await form.close()
        return done(answer, target)

    @r.post("/admin/datasets/{dataset_id}/versions/{version}/review")
    async def review(request: Request, dataset_id: str, version: int) -> Response:
        """`decision` approve or reject; a rejection needs its reason (`note`), kept with the version."""
        session = web.session(request)
        form = await web.posted_form(request, session)
        if form is None:
            return web.error_page(request, session, 403, messages.CSRF_REFUSED)
        target, decision = uuid_of(dataset_id), form.get("decision", "")
        if target is None or decision not in ("approve", "reject"):
            return web.error_page(request, session, 404, messages.problem_message(404))
        note = form.get("note", "").strip()
        values = {"note": note, "source": "file"}
        if decision == "reject" and not note:
            return await dataset_page(request, session, target, version, status=422, values=values,
                                      errors={"note": "반려 사유를 적으세요. 데이터를 만든 사람이 이 사유를 봅니다."})
        try:
            await call(request, session, "POST", f"/api/v1/datasets/{target}/versions/{version}/{decision}",
                       json={"note": note} if note else {})
        except ApiError as exc:
            if exc.status in (401, 404):
                raise
            errors, error = messages.form_errors(exc, ("note",))
            if exc.status == 409:
                error = ("검토 대기 중인 버전만 승인하거나 반려할 수 있습니다. 이미 검토되었거나 품질 검사를 "
                         "통과하지 못한 버전입니다.")
            return await dataset_page(request, session, target, version, status=exc.status, errors=errors,
                                      error=error, values=values)
        flash = "dataset-approved" if decision == "approve" else "dataset-rejected"
        return RedirectResponse(link(f"/admin/datasets/{target}", {"version": version, "msg": flash}),
                                status_code=303)

    @r.post("/admin/datasets/{dataset_id}/delete")
    async def delete(request: Request, dataset_id: str) -> Response:
        session = web.session(request)
        form = await web.posted_form(request, session)
        if form is None:
            return web.error_page(request, session, 403, messages.CSRF_REFUSED)
        target = uuid_of(dataset_id)
        if target is None:
            return web.error_page(request, session, 404, messages.problem_message(404))
        await web.api.send("DELETE", f"/api/v1/datasets/{target}", session.token, client_ip=client_ip(request))
        return RedirectResponse("/admin/datasets?msg=dataset-deleted", status_code=303)

    return r
