"""HTTP API of training datasets (model-serving owns them: schema `models`).

POST   /api/v1/datasets                                  create a dataset with its first version
POST   /api/v1/datasets/{id}/versions                    a new version of it
GET    /api/v1/datasets                                  the tenant's and the shared datasets, latest version each
GET    /api/v1/datasets/{id}                             one dataset with its versions (statistics, status)
GET    /api/v1/datasets/{id}/versions/{n}                one version with its gate report
POST   /api/v1/datasets/{id}/versions/{n}/approve|reject {"note"?}
DELETE /api/v1/datasets/{id}                             soft delete (purged after 90 days)

A version comes from a labelled file (multipart: `file` (.jsonl or .csv), `name`, `task`, `shared`)
or, as JSON `{"name", "task", "source": "user"}`, from the tenant's own documents and the tags
people added to them (the feedback path). Platform admins make shared datasets (`shared`, default
true for them) or their tenant's; tenant admins only their tenant's. A shared version is approved
by a platform admin, a tenant's by its tenant admin (or a platform admin of that tenant).
"""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common.auth import Principal, TokenVerifier
from services.common.context import current_request_id
from services.common.errors import ProblemError

from ..api_access import reached, role_gate
from .eval_sets import TASK_RE, load_eval_set
from .gate import GateSettings, Record, SchemaError, parse_records, run_gate
from .store import DatasetStore

ADMIN_ROLES = frozenset({"platform_admin", "tenant_admin"})
FORMATS = {".jsonl": "jsonl", ".csv": "csv"}


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str | None = Field(None, max_length=1000)


class UserSourceBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1, max_length=100)
    task: str = Field(..., pattern=TASK_RE.pattern)
    source: str = Field(..., pattern="^user$", description="'user': the tenant's documents with people's tags")


class DatasetContext:
    """What the dataset routes need besides the database: settings and the task's label set."""

    def __init__(self, *, eval_sets_dir: Path, gate: GateSettings, max_upload_bytes: int,
                 label_set: Callable[[str], frozenset[str] | None], feedback_max_rows: int = 100_000) -> None:
        self.eval_sets_dir = eval_sets_dir
        self.gate = gate
        self.max_upload_bytes = max_upload_bytes
        self.label_set = label_set
        self.feedback_max_rows = feedback_max_rows


def _uuid(value: str, field: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ProblemError(404, f"no such {field}", field=field) from None


def build_dataset_router(current: Callable[[], DatasetStore], verifier: TokenVerifier,
                         ctx: DatasetContext) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["datasets"])

    admin = role_gate(verifier, ADMIN_ROLES, "managing datasets needs the tenant_admin or platform_admin role")

    def store() -> DatasetStore:
        return reached(current)

    def check_shared(principal: Principal, shared: bool) -> None:
        if shared and "platform_admin" not in principal.roles:
            raise ProblemError(403, "only platform admins make shared datasets", field="shared")

    async def gate_and_store(principal: Principal, dataset: dict[str, Any], records: list[Record], *,
                             source: str, fmt: str) -> JSONResponse:
        eval_set = await asyncio.to_thread(load_eval_set, ctx.eval_sets_dir, dataset["task"])
        result = await asyncio.to_thread(
            run_gate, records, ctx.gate, label_set=ctx.label_set(dataset["task"]),
            eval_keys=eval_set.keys if eval_set else frozenset(),
            eval_set=eval_set.describe() if eval_set else None)
        stored = await store().add_version(principal, dataset, result, source=source, fmt=fmt,
                                           request_id=current_request_id())
        body = {"dataset": _dataset_out(dataset), "version": _jsonable(stored.row), "report": result.report,
                "created": stored.created}
        return JSONResponse(body, status_code=201 if stored.created else 200,
                            headers={"Location": f"/api/v1/datasets/{dataset['id']}/versions/{stored.row['version']}"})

    async def read_upload(request: Request) -> tuple[dict[str, str], list[Record], str]:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > ctx.max_upload_bytes + 64 * 1024:
            raise ProblemError(413, f"the file is larger than the limit of {ctx.max_upload_bytes} bytes",
                               field="file", extra={"max_bytes": ctx.max_upload_bytes})
        form = await request.form(max_files=1, max_fields=10)
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise ProblemError(422, "a labelled file (.jsonl or .csv) is required in the field 'file'",
                                   field="file")
            fmt = FORMATS.get(Path(upload.filename or "").suffix.lower())
            if fmt is None:
                raise ProblemError(415, "the file must be .jsonl or .csv", field="file")
            data = await upload.read(ctx.max_upload_bytes + 1)
            if len(data) > ctx.max_upload_bytes:
                raise ProblemError(413, f"the file is larger than the limit of {ctx.max_upload_bytes} bytes",
                                   field="file", extra={"max_bytes": ctx.max_upload_bytes})
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
        finally:
            await form.close()
        try:
            records = await asyncio.to_thread(parse_records, data, fmt)
        except SchemaError as exc:
            field = exc.field if exc.row is None else f"rows[{exc.row}].{exc.field}"
            raise ProblemError(400, str(exc), slug="invalid-dataset", title="Invalid dataset", field=field,
                               extra={"row": exc.row}) from None
        return fields, records, fmt

    @router.post("/datasets", status_code=201, summary="Create a dataset from a labelled file or users' tags")
    async def create_dataset(request: Request, principal: Principal = admin) -> JSONResponse:
        s = store()
        if (request.headers.get("content-type") or "").startswith("application/json"):
            try:
                body = UserSourceBody.model_validate_json(await request.body())
            except ValidationError as exc:
                first = exc.errors()[0]
                field = ".".join(str(p) for p in first["loc"]) or "source"
                raise ProblemError(422, f"{field}: {first['msg']}", field=field) from None
            records = await s.feedback(principal, ctx.feedback_max_rows)
            if not records:
                raise ProblemError(422, "no document of this department has a tag added by a person yet",
                                   field="source")
            dataset = await s.create(principal, name=body.name, task=body.task, shared=False)
            return await gate_and_store(principal, dataset, records, source="user", fmt="user")
        fields, records, fmt = await read_upload(request)
        name = (fields.get("name") or "").strip()
        task = (fields.get("task") or "").strip()
        if not 1 <= len(name) <= 100:
            raise ProblemError(422, "'name' is 1-100 characters", field="name")
        if not TASK_RE.match(task):
            raise ProblemError(422, "'task' is a lower-case identifier such as 'headlines'", field="task")
        shared_field = fields.get("shared")
        shared = ("platform_admin" in principal.roles) if shared_field is None else shared_field.lower() == "true"
        check_shared(principal, shared)
        dataset = await s.create(principal, name=name, task=task, shared=shared)
        return await gate_and_store(principal, dataset, records, source="upload", fmt=fmt)

    async def visible_dataset(principal: Principal, dataset_id: str) -> dict[str, Any]:
        found = await store().get(principal, _uuid(dataset_id, "dataset"))
        if found is None:
            raise ProblemError(404, "no such dataset", field="dataset")
        return found

    @router.post("/datasets/{dataset_id}/versions", status_code=201, summary="A new version from a labelled file")
    async def new_version(dataset_id: str, request: Request, principal: Principal = admin) -> JSONResponse:
        dataset = await visible_dataset(principal, dataset_id)
        check_owner(principal, dataset)
        if (request.headers.get("content-type") or "").startswith("application/json"):
            records = await store().feedback(principal, ctx.feedback_max_rows)
            if dataset["shared"] or not records:
                raise ProblemError(422, "no documents with people's tags for this dataset", field="source")
            return await gate_and_store(principal, dataset, records, source="user", fmt="user")
        _, records, fmt = await read_upload(request)
        return await gate_and_store(principal, dataset, records, source="upload", fmt=fmt)

    def check_owner(principal: Principal, dataset: dict[str, Any]) -> None:
        """Shared datasets are changed and reviewed by platform admins only."""
        if dataset["shared"] and "platform_admin" not in principal.roles:
            raise ProblemError(403, "a shared dataset is managed by platform admins")

    @router.get("/datasets", summary="Datasets of the department and the shared ones")
    async def list_datasets(principal: Principal = admin) -> dict[str, Any]:
        rows = await store().list_datasets(principal)
        return {"datasets": [{**_dataset_out(r), "latest": r["latest"]} for r in rows]}

    @router.get("/datasets/{dataset_id}", summary="A dataset with its versions")
    async def get_dataset(dataset_id: str, principal: Principal = admin) -> dict[str, Any]:
        dataset = await visible_dataset(principal, dataset_id)
        versions = await store().versions(principal, str(dataset["id"]))
        return {**_dataset_out(dataset), "versions": [_jsonable(v) for v in versions]}

    @router.get("/datasets/{dataset_id}/versions/{version}", summary="A version with its gate report")
    async def get_version(dataset_id: str, version: int, principal: Principal = admin) -> dict[str, Any]:
        found = await store().version(principal, _uuid(dataset_id, "dataset"), version)
        if found is None:
            raise ProblemError(404, "no such dataset version", field="version")
        found.pop("tenant_id", None)
        return _jsonable(found)

    async def decide(dataset_id: str, version: int, principal: Principal, approve: bool,
                     body: DecisionBody | None) -> dict[str, Any]:
        dataset = await visible_dataset(principal, dataset_id)
        check_owner(principal, dataset)
        found = await store().version(principal, str(dataset["id"]), version)
        if found is None:
            raise ProblemError(404, "no such dataset version", field="version")
        if found["status"] != "pending":
            raise ProblemError(409, f"version {version} is {found['status']}; only a pending version is reviewed"
                               + ("; the gate blocked it: " + "; ".join(found["report"]["blocking"])
                                  if found["status"] == "blocked" else ""), field="version",
                               extra={"status": found["status"]})
        try:
            decided = await store().decide(principal, str(dataset["id"]), version, approve=approve,
                                           note=body.note if body else None, request_id=current_request_id())
        except LookupError:
            raise ProblemError(409, "the version was reviewed meanwhile", field="version") from None
        decided.pop("tenant_id", None)
        return _jsonable(decided)

    @router.post("/datasets/{dataset_id}/versions/{version}/approve", summary="Approve a version for training")
    async def approve(dataset_id: str, version: int, body: DecisionBody | None = None,
                      principal: Principal = admin) -> dict[str, Any]:
        return await decide(dataset_id, version, principal, True, body)

    @router.post("/datasets/{dataset_id}/versions/{version}/reject", summary="Reject a version")
    async def reject(dataset_id: str, version: int, body: DecisionBody | None = None,
                     principal: Principal = admin) -> dict[str, Any]:
        return await decide(dataset_id, version, principal, False, body)

    @router.delete("/datasets/{dataset_id}", summary="Soft delete (kept 90 days)")
    async def delete_dataset(dataset_id: str, principal: Principal = admin) -> dict[str, Any]:
        dataset = await visible_dataset(principal, dataset_id)
        check_owner(principal, dataset)
        await store().soft_delete(principal, str(dataset["id"]), current_request_id())
        return {"id": str(dataset["id"]), "deleted": True}

    return router


def _dataset_out(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(row["id"]), "name": row["name"], "task": row["task"], "shared": row["shared"],
            "created_by": row["created_by_name"], "created_at": row["created_at"].isoformat()}


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        out[k] = v.isoformat() if hasattr(v, "isoformat") else (str(v) if isinstance(v, uuid.UUID) else v)
    if isinstance(out.get("content_sha256"), str):
        out["content_sha256"] = out["content_sha256"].strip()
    return out
