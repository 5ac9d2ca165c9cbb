"""HTTP API of shadow mode (platform_admin only, here as well as at the gateway's models route).

GET /api/v1/models/{name}/shadow   the report: agreement of the candidate with production, overall,
                                   per label and per tenant, its latency, drops, since when
                                   (`?candidate_version=N`, `?tenant_id=UUID` narrow it)
PUT /api/v1/models/{name}/shadow   {"enabled": bool, "share"?: 0 < x <= 1}: switch it (audited)
"""
from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from services.common.auth import Principal, TokenVerifier
from services.common.context import current_request_id
from services.common.errors import ProblemError

from .api_access import reached, role_gate
from .registry import RegistryError, check_name
from .registry_api import ADMIN_ROLE
from .shadow import ShadowMode


class ShadowBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(..., description="whether the candidate scores a share of live predictions")
    share: float | None = Field(None, gt=0, le=1, description="share of live texts; default DOCTAG_SHADOW_SHARE")


def build_shadow_router(current: Callable[[], ShadowMode], verifier: TokenVerifier) -> APIRouter:
    """`current()` returns shadow mode or raises (the registry is not connected: answered 503)."""
    router = APIRouter(prefix="/api/v1", tags=["models"])

    admin = role_gate(verifier, {ADMIN_ROLE}, "shadow mode is managed by the platform_admin role")

    def shadow() -> ShadowMode:
        return reached(current)

    def valid_name(name: str) -> str:
        try:
            return check_name(name)
        except RegistryError as exc:
            raise ProblemError(422, str(exc), field="name") from None

    @router.get("/models/{name}/shadow", summary="Shadow mode report: the candidate's agreement with production")
    async def report(name: str, principal: Principal = admin,
                     candidate_version: int | None = Query(None, ge=1),
                     tenant_id: str | None = Query(None)) -> dict[str, Any]:
        if tenant_id is not None:
            try:
                tenant_id = str(uuid.UUID(tenant_id))
            except ValueError:
                raise ProblemError(422, "tenant_id must be a UUID", field="tenant_id") from None
        try:
            return await shadow().report(valid_name(name), candidate_version=candidate_version, tenant_id=tenant_id)
        except LookupError:
            raise ProblemError(404, f"no model {name!r}", field="name") from None

    @router.put("/models/{name}/shadow", summary="Switch shadow mode of a model's candidate")
    async def switch(name: str, body: ShadowBody, principal: Principal = admin) -> dict[str, Any]:
        try:
            return await shadow().set(principal, valid_name(name), enabled=body.enabled, share=body.share,
                                      request_id=current_request_id())
        except LookupError:
            raise ProblemError(404, f"no model {name!r}", field="name") from None

    return router
