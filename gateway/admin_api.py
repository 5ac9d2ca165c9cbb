"""The gateway's own administration endpoints over the identity schema (which only the gateway
may write), for people with a bearer token:

- `/api/v1/admin/users` (tenant_admin, own tenant): list, create, change role, disable or
  enable, reset password. A password reset, a role change and disabling end the user's tokens
  (token generation).
- `/api/v1/admin/api-keys` (tenant_admin, own tenant): create (the key is shown once; only
  its SHA-256 is stored), list, revoke. Keys carry the roles `user` and/or `tenant_admin`.
- `/api/v1/admin/tenants` (platform_admin): list every tenant with its daily API quota and
  today's calls; set a tenant's daily API quota.
- `/api/v1/admin/usage` (tenant_admin: own tenant; platform_admin: any tenant by `tenant_id`): the
  API calls counted per day (identity.api_usage) over the last `days` days, days without calls
  as 0, with the daily quota they count against.

Every change is written to the audit log of the tenant it changes (`admin.*` actions of
services/common/audit.py: actor, target, what changed, never a password or a key) in the
transaction of the change, so there is no change without its entry and no entry without its change.

Bodies are bounded JSON (services/common/jsonbody.py); mistakes answer 422 naming the field.
"""
from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from services.common import audit
from services.common.api_keys import key_hash, new_key
from services.common.api_quota import quota_day
from services.common.auth import Principal
from services.common.context import current_request_id, tenant_id_var
from services.common.db import DictConnection
from services.common.errors import ProblemError
from services.common.passwords import MAX_PASSWORD_CHARS, hash_password

from .plugins.jwt.handler import Handler as JwtHandler
from .plugins.jwt.schema import Config as JwtConfig
from .runtime import Gateway
from .tokens import USERNAME, ModelT, parse_json_model, read_body

MIN_PASSWORD_CHARS = 10
_ADMIN_JWT = JwtConfig(claims_to_verify=["exp"])


class NewUser(BaseModel):
    username: str = Field(pattern=USERNAME)
    password: str = Field(min_length=MIN_PASSWORD_CHARS, max_length=MAX_PASSWORD_CHARS)
    role: Literal["user", "tenant_admin"] = "user"


class UserChange(BaseModel):
    role: Literal["user", "tenant_admin"] | None = None
    disabled: bool | None = None
    password: str | None = Field(None, min_length=MIN_PASSWORD_CHARS, max_length=MAX_PASSWORD_CHARS)


KeyRole = Literal["user", "tenant_admin"]


def _user_role() -> list[KeyRole]:
    return ["user"]


class NewApiKey(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    roles: list[KeyRole] = Field(default_factory=_user_role, min_length=1, max_length=2)


class TenantChange(BaseModel):
    api_daily_quota: int | None = Field(ge=0, le=2**31 - 1)


async def _body(request: Request, model: type[ModelT]) -> ModelT:
    return parse_json_model(await read_body(request), model)


def _uuid(raw: str, field: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise ProblemError(422, f"{field} must be a UUID", field=field) from None


def caller_dependency(gateway: Gateway) -> Callable[[Request], Awaitable[Principal]]:
    """The bearer token's principal, checked like the `jwt` plugin does (signature, expiry, revocation)."""

    async def caller(request: Request) -> Principal:
        handler = gateway.runtime.pipeline.handlers.get("jwt")
        if not isinstance(handler, JwtHandler):
            raise ProblemError(503, "the gateway has no jwt plugin configured")
        auth = handler.verifier.authenticate(request.headers, _ADMIN_JWT)
        if handler.generations is not None:
            await handler.generations.check(auth.principal, auth.claims)
        tenant_id_var.set(auth.principal.tenant_id)
        return auth.principal

    return caller


def _require(principal: Principal, role: str) -> None:
    if role not in principal.roles:
        raise ProblemError(403, f"this needs the {role} role")


async def _record(conn: DictConnection, principal: Principal, action: str, target: dict[str, Any],
                  **details: Any) -> None:
    """The audit entry of one admin change, in the change's transaction (its tenant's log)."""
    await audit.record(conn, action=action, actor_id=principal.user_id if _is_uuid(principal.user_id) else None,
                       actor_name=principal.username or None, request_id=current_request_id(),
                       details={"target": target, **details, "actor_tenant_id": principal.tenant_id,
                                "actor_roles": list(principal.roles)})


def _user_target(row: dict[str, Any]) -> dict[str, Any]:
    return {"type": "user", "id": str(row["id"]), "username": row["username"]}


def _user(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(row["id"]), "username": row["username"], "roles": list(row["roles"]),
            "disabled": row["disabled"], "created_at": row["created_at"].isoformat()}


def _key(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(row["id"]), "name": row["name"], "roles": list(row["roles"]),
            "created_at": row["created_at"].isoformat(),
            "revoked_at": row["revoked_at"].isoformat() if row["revoked_at"] else None}


def admin_router(gateway: Gateway) -> APIRouter:
    router = APIRouter(prefix="/api/v1/admin", tags=["admin"])
    caller = Depends(caller_dependency(gateway))
    db = gateway.db
    user_columns = "id, username, roles, disabled, created_at"

    # ------------------------------------------------------------------ users
    @router.get("/users", summary="The caller's tenant's users (tenant_admin)")
    async def list_users(principal: Principal = caller) -> dict[str, Any]:
        _require(principal, "tenant_admin")
        async with db.tenant_transaction(principal.tenant_id) as conn:
            rows = await (await conn.execute(f"SELECT {user_columns} FROM identity.users ORDER BY username")).fetchall()
        return {"items": [_user(r) for r in rows]}

    @router.post("/users", status_code=201, summary="Create a user in the caller's tenant (tenant_admin)")
    async def create_user(request: Request, principal: Principal = caller) -> JSONResponse:
        _require(principal, "tenant_admin")
        new: NewUser = await _body(request, NewUser)
        async with db.tenant_transaction(principal.tenant_id) as conn:
            taken = await (await conn.execute("SELECT 1 FROM identity.users WHERE username = %s",
                                              (new.username,))).fetchone()
            if taken:
                raise ProblemError(409, f"a user {new.username!r} already exists", field="username")
            row = await (await conn.execute(
                f"INSERT INTO identity.users (id, tenant_id, username, password_hash, roles) "
                f"VALUES (%s, %s, %s, %s, %s) RETURNING {user_columns}",
                (str(uuid.uuid4()), principal.tenant_id, new.username, hash_password(new.password), [new.role]),
            )).fetchone()
            assert row is not None
            await _record(conn, principal, audit.ADMIN_USER_CREATED, _user_target(row), roles=list(row["roles"]))
        return JSONResponse(_user(row), status_code=201)

    @router.patch("/users/{user_id}", summary="Change a user's role, disable/enable, reset the password "
                                              "(tenant_admin); ends the user's tokens")
    async def change_user(user_id: str, request: Request, principal: Principal = caller) -> dict[str, Any]:
        _require(principal, "tenant_admin")
        target = _uuid(user_id, "user_id")
        change: UserChange = await _body(request, UserChange)
        sets: list[str] = []
        params: list[Any] = []
        if change.role is not None:
            sets.append("roles = %s")
            params.append([change.role])
        if change.disabled is not None:
            if target == principal.user_id and change.disabled:
                raise ProblemError(422, "you cannot disable yourself", field="disabled")
            sets.append("disabled = %s")
            params.append(change.disabled)
        if change.password is not None:
            sets += ["password_hash = %s", "token_generation = token_generation + 1"]
            params.append(hash_password(change.password))
        if not sets:
            raise ProblemError(422, "give role, disabled or password", field="body")
        async with db.tenant_transaction(principal.tenant_id) as conn:
            before = await (await conn.execute("SELECT roles, disabled FROM identity.users WHERE id = %s FOR UPDATE",
                                               (target,))).fetchone()
            row = await (await conn.execute(
                f"UPDATE identity.users SET {', '.join(sets)}, updated_at = now() WHERE id = %s "
                f"RETURNING {user_columns}", (*params, target))).fetchone()
            if row is None or before is None:
                raise ProblemError(404, "no such user in your tenant", field="user_id")
            who = _user_target(row)
            if change.role is not None:
                await _record(conn, principal, audit.ADMIN_USER_ROLE_CHANGED, who,
                              roles_before=list(before["roles"]), roles=list(row["roles"]))
            if change.disabled is not None:
                action = audit.ADMIN_USER_DISABLED if change.disabled else audit.ADMIN_USER_ENABLED
                await _record(conn, principal, action, who, was_disabled=bool(before["disabled"]))
            if change.password is not None:
                await _record(conn, principal, audit.ADMIN_USER_PASSWORD_RESET, who)
        return _user(row)

    # ------------------------------------------------------------------ API keys
    @router.get("/api-keys", summary="The caller's tenant's API keys, without the keys (tenant_admin)")
    async def list_keys(principal: Principal = caller) -> dict[str, Any]:
        _require(principal, "tenant_admin")
        async with db.tenant_transaction(principal.tenant_id) as conn:
            rows = await (await conn.execute(
                "SELECT id, name, roles, created_at, revoked_at FROM identity.api_keys "
                "WHERE tenant_id = public.app_tenant_id() ORDER BY created_at")).fetchall()
        return {"items": [_key(r) for r in rows]}

    @router.post("/api-keys", status_code=201, summary="Create an API key; the key is in this answer only "
                                                       "(tenant_admin)")
    async def create_key(request: Request, principal: Principal = caller) -> JSONResponse:
        _require(principal, "tenant_admin")
        new: NewApiKey = await _body(request, NewApiKey)
        key = new_key()
        async with db.tenant_transaction(principal.tenant_id) as conn:
            row = await (await conn.execute(
                "INSERT INTO identity.api_keys (id, tenant_id, name, key_hash, roles, created_by) "
                "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id, name, roles, created_at, revoked_at",
                (str(uuid.uuid4()), principal.tenant_id, new.name, key_hash(key), sorted(set(new.roles)),
                 principal.user_id if _is_uuid(principal.user_id) else None))).fetchone()
            assert row is not None
            await _record(conn, principal, audit.ADMIN_API_KEY_CREATED,
                          {"type": "api_key", "id": str(row["id"]), "name": row["name"]}, roles=list(row["roles"]))
        return JSONResponse({**_key(row), "key": key}, status_code=201, headers={"Cache-Control": "no-store"})

    @router.delete("/api-keys/{key_id}", status_code=204, summary="Revoke an API key (tenant_admin)")
    async def revoke_key(key_id: str, principal: Principal = caller) -> Response:
        _require(principal, "tenant_admin")
        target = _uuid(key_id, "key_id")
        async with db.tenant_transaction(principal.tenant_id) as conn:
            row = await (await conn.execute(
                "UPDATE identity.api_keys SET revoked_at = coalesce(revoked_at, now()) "
                "WHERE id = %s AND tenant_id = public.app_tenant_id() "
                "RETURNING id, name, revoked_at = now() AS revoked_now", (target,))).fetchone()
            if row is None:
                raise ProblemError(404, "no such API key in your tenant", field="key_id")
            if row["revoked_now"]:  # revoking a revoked key again changes nothing and records nothing
                await _record(conn, principal, audit.ADMIN_API_KEY_REVOKED,
                              {"type": "api_key", "id": str(row["id"]), "name": row["name"]})
        return Response(status_code=204)

    # ------------------------------------------------------------------ tenants
    @router.get("/tenants", summary="Every tenant with its daily API quota and today's calls (platform_admin)")
    async def list_tenants(principal: Principal = caller) -> dict[str, Any]:
        _require(principal, "platform_admin")
        settings = gateway.settings
        day = quota_day(datetime.now(UTC), settings.api_quota_timezone)
        async with db.transaction() as conn:
            rows = await (await conn.execute(
                "SELECT t.id, t.slug, t.name, t.api_daily_quota, coalesce(u.calls, 0) AS calls_today "
                "FROM identity.tenants t LEFT JOIN identity.api_usage u ON u.tenant_id = t.id AND u.day = %s "
                "ORDER BY t.slug", (day,))).fetchall()
        return {"items": [{"id": str(r["id"]), "slug": r["slug"], "name": r["name"],
                           "api_daily_quota": r["api_daily_quota"] if r["api_daily_quota"] is not None
                           else settings.api_daily_quota_default,
                           "api_daily_quota_is_default": r["api_daily_quota"] is None,
                           "api_calls_today": int(r["calls_today"])} for r in rows]}

    @router.patch("/tenants/{tenant_id}", summary="Set a tenant's daily API quota (null: the platform default; "
                                                  "platform_admin)")
    async def change_tenant(tenant_id: str, request: Request, principal: Principal = caller) -> dict[str, Any]:
        _require(principal, "platform_admin")
        target = _uuid(tenant_id, "tenant_id")
        change: TenantChange = await _body(request, TenantChange)
        # In the changed tenant's transaction: its audit log gets the entry.
        async with db.tenant_transaction(target) as conn:
            before = await (await conn.execute("SELECT api_daily_quota FROM identity.tenants WHERE id = %s FOR UPDATE",
                                               (target,))).fetchone()
            row = await (await conn.execute(
                "UPDATE identity.tenants SET api_daily_quota = %s WHERE id = %s RETURNING id, slug, api_daily_quota",
                (change.api_daily_quota, target))).fetchone()
            if row is None or before is None:
                raise ProblemError(404, "no such tenant", field="tenant_id")
            await _record(conn, principal, audit.ADMIN_TENANT_QUOTA_CHANGED,
                          {"type": "tenant", "id": str(row["id"]), "slug": row["slug"]},
                          api_daily_quota_before=before["api_daily_quota"], api_daily_quota=row["api_daily_quota"])
        return {"id": str(row["id"]), "slug": row["slug"], "api_daily_quota": row["api_daily_quota"]}

    # ------------------------------------------------------------------ usage history
    @router.get("/usage", summary="API calls per day over the last `days` days: the caller's tenant "
                                  "(tenant_admin), any tenant by tenant_id (platform_admin)")
    async def usage(principal: Principal = caller,
                    days: Annotated[int, Query(ge=1, le=366)] = 30,
                    tenant_id: str | None = None) -> dict[str, Any]:
        if not {"tenant_admin", "platform_admin"} & set(principal.roles):
            raise ProblemError(403, "this needs the tenant_admin or platform_admin role")
        target = principal.tenant_id if tenant_id is None else _uuid(tenant_id, "tenant_id")
        if target != principal.tenant_id and "platform_admin" not in principal.roles:
            raise ProblemError(403, "only a platform_admin may read another tenant's usage", field="tenant_id")
        settings = gateway.settings
        last = quota_day(datetime.now(UTC), settings.api_quota_timezone)
        first = last - timedelta(days=days - 1)
        # The gateway's role may read every tenant's usage (the quota check needs it): the tenant is
        # named in the query itself.
        async with db.transaction() as conn:
            tenant = await (await conn.execute(
                "SELECT id, slug, name, api_daily_quota FROM identity.tenants WHERE id = %s", (target,))).fetchone()
            rows = await (await conn.execute(
                "SELECT day, calls FROM identity.api_usage WHERE tenant_id = %s AND day BETWEEN %s AND %s",
                (target, first, last))).fetchall()
        if tenant is None:
            raise ProblemError(404, "no such tenant", field="tenant_id")
        calls = {r["day"]: int(r["calls"]) for r in rows}
        series = [{"day": (first + timedelta(days=i)).isoformat(), "calls": calls.get(first + timedelta(days=i), 0)}
                  for i in range(days)]
        limit = tenant["api_daily_quota"] if tenant["api_daily_quota"] is not None else settings.api_daily_quota_default
        return {"tenant_id": str(tenant["id"]), "slug": tenant["slug"], "name": tenant["name"],
                "daily_limit": limit, "timezone": settings.api_quota_timezone,
                "total": sum(d["calls"] for d in series), "days": series}

    return router


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
