"""Platform administrators read and set a tenant's storage quota (`documents.quotas`):
`GET` and `PUT /api/v1/storage-quotas/{tenant_id}` with `{"quota_bytes": N}`.

Only `platform_admin` (the gateway's `storage-quotas` route allows no other role; checked here
again, a refusal audited as denied in the caller's tenant). The change runs in the target
tenant's transaction, so the quota row (row-level security) and the audit entry
(`admin.storage_quota_changed`) are the target tenant's, written together.

A quota below what the tenant already stores is refused (409 naming `quota_bytes`, with
`used_bytes`): nothing would be deleted, and every upload would fail until documents are purged,
so the administrator decides that deliberately, with the number in front of them. A tenant
without a quota row (not created with `doctag tenant create`) is 404.
"""

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends

from services.common import audit
from services.common.auth import Principal, TokenVerifier
from services.common.context import current_request_id
from services.common.errors import ProblemError

from .service import DocumentService

PLATFORM_ADMIN = "platform_admin"
# 1 PiB: larger is a typo, not a department's archive (the column is a bigint).
MAX_QUOTA_BYTES = 2**50


def _tenant(raw: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise ProblemError(422, "tenant_id must be a UUID", field="tenant_id") from None


def _is_uuid(raw: str | None) -> bool:
    try:
        uuid.UUID(str(raw))
    except ValueError:
        return False
    return True


def quota_bytes_of(body: Any) -> int:
    """The requested quota: an integer number of bytes, 1 to MAX_QUOTA_BYTES."""
    value = body.get("quota_bytes") if isinstance(body, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProblemError(422, "quota_bytes must be an integer number of bytes", field="quota_bytes")
    if not 0 < value <= MAX_QUOTA_BYTES:
        raise ProblemError(422, f"quota_bytes must be between 1 and {MAX_QUOTA_BYTES} (1 PiB)", field="quota_bytes")
    return value


def _public(tenant_id: str, row: dict[str, Any]) -> dict[str, Any]:
    return {"tenant_id": tenant_id, "quota_bytes": int(row["quota_bytes"]), "used_bytes": int(row["used_bytes"]),
            "available_bytes": max(int(row["quota_bytes"]) - int(row["used_bytes"]), 0)}


class StorageQuotas:
    def __init__(self, service: DocumentService) -> None:
        self.service = service

    async def _require_platform_admin(self, principal: Principal) -> None:
        if PLATFORM_ADMIN not in principal.roles:
            await self.service.record_denied(principal, audit.ADMIN_STORAGE_QUOTA_CHANGED)
            raise ProblemError(403, "only a platform_admin may read or change storage quotas")

    async def get(self, principal: Principal, tenant_id: str) -> dict[str, Any]:
        await self._require_platform_admin(principal)
        async with self.service.db.tenant_transaction(tenant_id) as conn:
            row = await (await conn.execute(
                "SELECT quota_bytes, used_bytes FROM documents.quotas WHERE tenant_id = public.app_tenant_id()"
            )).fetchone()
        if row is None:
            raise ProblemError(404, "no such tenant (it has no storage quota)", field="tenant_id")
        return _public(tenant_id, row)

    async def set(self, principal: Principal, tenant_id: str, quota_bytes: int) -> dict[str, Any]:
        await self._require_platform_admin(principal)
        async with self.service.db.tenant_transaction(tenant_id) as conn:
            # Locked like an upload locks it (repository.lock_quota): no upload slips in between
            # the check against the usage and the change.
            before = await (await conn.execute(
                "SELECT quota_bytes, used_bytes FROM documents.quotas WHERE tenant_id = public.app_tenant_id() "
                "FOR UPDATE")).fetchone()
            if before is None:
                raise ProblemError(404, "no such tenant (it has no storage quota)", field="tenant_id")
            used = int(before["used_bytes"])
            if quota_bytes < used:
                raise ProblemError(409, f"the tenant already stores {used} bytes; a quota below that is refused "
                                        "(purge documents first)", field="quota_bytes",
                                   extra={"used_bytes": used, "quota_bytes": int(before["quota_bytes"])})
            row = await (await conn.execute(
                "UPDATE documents.quotas SET quota_bytes = %s, updated_at = now() "
                "WHERE tenant_id = public.app_tenant_id() RETURNING quota_bytes, used_bytes",
                (quota_bytes,))).fetchone()
            assert row is not None
            actor = principal.user_id if _is_uuid(principal.user_id) else None
            await audit.record(conn, action=audit.ADMIN_STORAGE_QUOTA_CHANGED, actor_id=actor,
                               actor_name=principal.username or None, request_id=current_request_id(),
                               details={"target": {"type": "tenant", "id": tenant_id},
                                        "quota_bytes_before": int(before["quota_bytes"]),
                                        "quota_bytes": quota_bytes, "used_bytes": used,
                                        "actor_tenant_id": principal.tenant_id,
                                        "actor_roles": list(principal.roles)})
        return _public(tenant_id, row)


def build_storage_quota_router(quotas: StorageQuotas, verifier: TokenVerifier) -> APIRouter:
    router = APIRouter(prefix="/api/v1/storage-quotas", tags=["storage quotas"])
    Auth = Annotated[Principal, Depends(verifier)]

    @router.get("/{tenant_id}", summary="A tenant's storage quota and usage (platform_admin)")
    async def get_quota(tenant_id: str, principal: Auth) -> dict[str, Any]:
        return await quotas.get(principal, _tenant(tenant_id))

    @router.put("/{tenant_id}", summary="Set a tenant's storage quota in bytes; not below its usage "
                                        "(platform_admin, audited)")
    async def set_quota(tenant_id: str, principal: Auth,
                        body: Annotated[Any, Body(examples=[{"quota_bytes": 10 * 2**30}])]) -> dict[str, Any]:
        return await quotas.set(principal, _tenant(tenant_id), quota_bytes_of(body))

    return router
