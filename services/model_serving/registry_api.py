"""HTTP API of the model registry (platform_admin only, here as well as at the gateway).

GET  /api/v1/models                          models with their aliases
GET  /api/v1/models/{name}/versions          versions of one model
POST /api/v1/models/{name}/versions          upload an artifact archive (multipart field `file`)
PUT  /api/v1/models/{name}/aliases/{alias}   {"version": N}: move an alias, answers the previous target
POST /api/v1/models/{name}/aliases/{alias}/rollback   the alias back to its target before the last move

The routes exist from start-up; while the registry's database has not been reached they
answer 503 (problem+json, `Retry-After`) after the usual 401/403 checks.
"""
from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from services.common.auth import Principal, TokenVerifier
from services.common.errors import ProblemError
from services.common.multipart import MultipartError, MultipartUpload

from .api_access import reached, role_gate
from .archive import ArchiveError, ArchiveLimits, extract_archive, remove_tree
from .registry import (
    ModelRegistry,
    RegistryError,
    RegistrySettings,
    check_alias,
    check_name,
)

ADMIN_ROLE = "platform_admin"


class AliasBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(..., ge=1, description="the version the alias points at from now on")


def _problem(exc: RegistryError, artifact_field: str = "file") -> ProblemError:
    field = artifact_field if exc.field in (None, "artifact") else exc.field
    return ProblemError(exc.status, str(exc), field=field)


def build_registry_router(current: Callable[[], ModelRegistry], verifier: TokenVerifier,
                          settings: RegistrySettings | None = None) -> APIRouter:
    """`current()` returns the registry or raises RegistryUnavailable (answered 503)."""
    settings = settings or RegistrySettings()
    router = APIRouter(prefix="/api/v1", tags=["models"])
    limits = ArchiveLimits(max_bytes=settings.registry_max_unpacked_bytes, max_files=settings.registry_max_files)
    max_upload = settings.registry_max_upload_bytes

    admin = role_gate(verifier, {ADMIN_ROLE}, "managing models needs the platform_admin role")

    async def connected(principal: Principal = admin) -> ModelRegistry:
        return reached(current)

    registry_dep = Depends(connected)

    def valid_name(name: str) -> str:
        try:
            return check_name(name)
        except RegistryError as exc:
            raise _problem(exc) from None

    @router.get("/models", summary="Registered models with their aliases")
    async def list_models(registry: ModelRegistry = registry_dep) -> dict[str, Any]:
        return {"models": await registry.list_models()}

    @router.get("/models/{name}/versions", summary="Versions of a model, oldest first")
    async def list_versions(name: str, registry: ModelRegistry = registry_dep) -> dict[str, Any]:
        try:
            return {"name": name, "versions": await registry.list_versions(valid_name(name))}
        except RegistryError as exc:
            raise _problem(exc) from None

    @router.post("/models/{name}/versions", status_code=201,
                 summary="Register an artifact archive (.tar.gz or .zip, multipart field `file`) as a new version")
    async def upload_version(name: str, request: Request, principal: Principal = admin,
                             registry: ModelRegistry = registry_dep) -> JSONResponse:
        valid_name(name)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_upload + 64 * 1024:
            raise ProblemError(413, f"the archive is larger than the limit of {max_upload} bytes", field="file",
                               extra={"max_bytes": max_upload})
        registry.store.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=".upload-", dir=registry.store))
        try:
            archive = await _receive(request, workdir / "archive", max_upload)
            try:
                root = await asyncio.to_thread(extract_archive, archive, workdir / "unpacked", limits)
            except ArchiveError as exc:
                raise ProblemError(422, str(exc), field="file") from None
            try:
                done = await registry.register(name, root, created_by=principal.username or principal.user_id)
            except RegistryError as exc:
                raise _problem(exc) from None
        finally:
            await asyncio.to_thread(remove_tree, workdir)
        body = {"name": done.name, "version": done.version, "manifest_sha256": done.manifest_sha256,
                "created": done.created}
        return JSONResponse(body, status_code=201 if done.created else 200,
                            headers={"Location": f"/api/v1/models/{done.name}/versions"})

    @router.put("/models/{name}/aliases/{alias}", summary="Point an alias (e.g. production) at a version")
    async def set_alias(name: str, alias: str, body: AliasBody, principal: Principal = admin,
                        registry: ModelRegistry = registry_dep) -> dict[str, Any]:
        try:
            check_alias(alias)
            change = await registry.set_alias(valid_name(name), alias, body.version,
                                              by=principal.username or principal.user_id)
        except RegistryError as exc:
            raise _problem(exc) from None
        return {"name": change.name, "alias": change.alias, "version": change.version,
                "previous_version": change.previous}

    @router.post("/models/{name}/aliases/{alias}/rollback",
                 summary="Point an alias back at its previous version (undo the last promotion)")
    async def rollback(name: str, alias: str, principal: Principal = admin,
                       registry: ModelRegistry = registry_dep) -> dict[str, Any]:
        try:
            change = await registry.rollback(valid_name(name), alias, by=principal.username or principal.user_id)
        except RegistryError as exc:
            raise _problem(exc) from None
        return {"name": change.name, "alias": change.alias, "version": change.version,
                "previous_version": change.previous}

    return router


async def _receive(request: Request, path: Path, max_bytes: int) -> Path:
    """Streams the multipart `file` part to `path`, refusing more than `max_bytes`."""
    try:
        form = MultipartUpload(request.headers.get("content-type"))
    except MultipartError as exc:
        raise ProblemError(415, str(exc), field=exc.field) from None
    size = 0
    try:
        with path.open("wb") as out:
            async for chunk in request.stream():
                for piece in form.feed(chunk):
                    size += len(piece)
                    if size > max_bytes:
                        raise ProblemError(413, f"the archive is larger than the limit of {max_bytes} bytes",
                                           field="file", extra={"max_bytes": max_bytes})
                    await asyncio.to_thread(out.write, piece)
        form.finish()
    except MultipartError as exc:
        raise ProblemError(400, str(exc), field=exc.field) from None
    if not form.file_seen:
        raise ProblemError(422, "an artifact archive is required in the multipart field 'file'", field="file")
    if size == 0:
        raise ProblemError(422, "the archive is empty", field="file")
    return path
