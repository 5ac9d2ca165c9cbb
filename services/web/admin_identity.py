"""Administrators' identity pages over the gateway's admin API: the department's users and API
keys and its API usage over 30 days (tenant_admin), every department's daily API quota and (over
upload's `/api/v1/storage-quotas`) storage quota (platform_admin).
Every change is a CSRF-checked form; the API decides, the page explains."""
from __future__ import annotations

import asyncio
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from . import messages
from .api import ApiError
from .charts import daily_bars
from .core import Web, client_ip, uuid_of
from .session import Session

USAGE_DAYS = 30
KEY_ROLES = ("user", "tenant_admin")
USERNAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
MB = 1024 * 1024
# The form's bound; upload refuses above 1 PiB itself (services/upload/storage_quotas.py).
MAX_STORAGE_QUOTA_MB = 2**30


def _mb(size: int) -> str:
    """Bytes as MB for a sentence, rounded up so "already uses" is never understated."""
    return f"{-(-size // MB):,}"


def router(web: Web) -> APIRouter:
    r = APIRouter()

    async def form_of(request: Request, session: Session) -> dict[str, Any] | None:
        return await web.posted_form(request, session, lists=("roles",))

    refused = web.refused
    call = web.call

    # -- users ------------------------------------------------------------------------------
    async def users_page(request: Request, session: Session, *, status: int = 200, error: str | None = None,
                         values: dict[str, str] | None = None) -> Response:
        users, load_error = [], None
        try:
            users = (await call(request, session, "GET", "/api/v1/admin/users"))["items"]
        except ApiError as exc:
            if exc.status == 401:
                raise
            load_error = messages.problem_message(exc)
        return web.render(request, "admin_users.html", session, status=status, users=users,
                          error=error or load_error, values=values or {}, roles=KEY_ROLES)

    @r.get("/admin/users")
    async def users(request: Request) -> Response:
        session = web.session(request)
        if not session.manages_tenant:
            return refused(request, session, "부서 관리자")
        return await users_page(request, session)

    @r.post("/admin/users")
    async def create_user(request: Request) -> Response:
        session = web.session(request)
        form = await form_of(request, session)
        if form is None:
            return web.error_page(request, session, 403, messages.CSRF_REFUSED)
        username, role = form.get("username", "").strip(), form.get("role", "user")
        values = {"username": username, "role": role}
        if not USERNAME.match(username):
            return await users_page(request, session, status=422, values=values,
                                    error="사용자 이름은 영문, 숫자, . _ @ - 로 된 1~64자입니다.")
        try:
            await call(request, session, "POST", "/api/v1/admin/users",
                       json={"username": username, "password": form.get("password", ""), "role": role})
        except ApiError as exc:
            if exc.status == 401:
                raise
            message = ("같은 이름의 사용자가 이미 있습니다." if exc.status == 409
                       else messages.problem_message(exc))
            return await users_page(request, session, status=exc.status, error=message, values=values)
        return RedirectResponse("/admin/users?msg=user-created", status_code=303)

    @r.post("/admin/users/{user_id}")
    async def change_user(request: Request, user_id: str) -> Response:
        """One change per form: `action` is role (with `role`), disable, enable or password (with `password`)."""
        session = web.session(request)
        form = await form_of(request, session)
        if form is None:
            return web.error_page(request, session, 403, messages.CSRF_REFUSED)
        target, action = uuid_of(user_id), form.get("action", "")
        changes = {"role": {"role": form.get("role", "")}, "disable": {"disabled": True},
                   "enable": {"disabled": False}, "password": {"password": form.get("password", "")}}
        if target is None or action not in changes:
            return web.error_page(request, session, 404, messages.problem_message(404))
        try:
            await call(request, session, "PATCH", f"/api/v1/admin/users/{target}", json=changes[action])
        except ApiError as exc:
            if exc.status == 401:
                raise
            message = ("자기 자신은 사용 중지할 수 없습니다." if action == "disable" and exc.status == 422
                       else messages.problem_message(exc))
            return await users_page(request, session, status=exc.status, error=message)
        return RedirectResponse(f"/admin/users?msg=user-{action}", status_code=303)

    # -- API keys ---------------------------------------------------------------------------
    async def keys_page(request: Request, session: Session, *, status: int = 200, error: str | None = None,
                        created: dict[str, Any] | None = None) -> Response:
        keys, load_error = [], None
        try:
            keys = (await call(request, session, "GET", "/api/v1/admin/api-keys"))["items"]
        except ApiError as exc:
            if exc.status == 401:
                raise
            load_error = messages.problem_message(exc)
        return web.render(request, "admin_keys.html", session, status=status, keys=list(reversed(keys)),
                          error=error or load_error, created=created, roles=KEY_ROLES)

    @r.get("/admin/api-keys")
    async def api_keys(request: Request) -> Response:
        session = web.session(request)
        if not session.manages_tenant:
            return refused(request, session, "부서 관리자")
        return await keys_page(request, session)

    @r.post("/admin/api-keys")
    async def create_key(request: Request) -> Response:
        """The new key is in this answer only (a page, not a redirect; pages are never cached)."""
        session = web.session(request)
        form = await form_of(request, session)
        if form is None:
            return web.error_page(request, session, 403, messages.CSRF_REFUSED)
        roles = [role for role in form["roles"] if role in KEY_ROLES] or ["user"]
        try:
            created = await call(request, session, "POST", "/api/v1/admin/api-keys",
                                 json={"name": form.get("name", "").strip(), "roles": roles})
        except ApiError as exc:
            if exc.status == 401:
                raise
            return await keys_page(request, session, status=exc.status, error=messages.problem_message(exc))
        return await keys_page(request, session, status=201, created=created)

    @r.post("/admin/api-keys/{key_id}/revoke")
    async def revoke_key(request: Request, key_id: str) -> Response:
        session = web.session(request)
        if await form_of(request, session) is None:
            return web.error_page(request, session, 403, messages.CSRF_REFUSED)
        target = uuid_of(key_id)
        if target is None:
            return web.error_page(request, session, 404, messages.problem_message(404))
        await web.api.send("DELETE", f"/api/v1/admin/api-keys/{target}", session.token, client_ip=client_ip(request))
        return RedirectResponse("/admin/api-keys?msg=key-revoked", status_code=303)

    # -- API usage --------------------------------------------------------------------------
    @r.get("/admin/usage")
    async def usage(request: Request, tenant: str | None = None) -> Response:
        session = web.session(request)
        if not session.is_tenant_admin:
            return refused(request, session, "부서 관리자")
        params: dict[str, Any] = {"days": USAGE_DAYS}
        target = uuid_of(tenant)
        if target and target != session.tenant_id:
            params["tenant_id"] = target
        body, error = None, None
        try:
            body = await call(request, session, "GET", "/api/v1/admin/usage", params=params)
        except ApiError as exc:
            if exc.status == 401:
                raise
            error = messages.problem_message(exc)
        chart = daily_bars(body["days"], body.get("daily_limit")) if body else None
        return web.render(request, "admin_usage.html", session, usage=body, chart=chart, error=error,
                          days=USAGE_DAYS)

    # -- tenants (platform) -----------------------------------------------------------------
    @r.get("/admin/tenants")
    async def tenants(request: Request) -> Response:
        session = web.session(request)
        if not session.is_platform_admin:
            return refused(request, session, "플랫폼 관리자")
        items, error = [], None
        try:
            items = (await call(request, session, "GET", "/api/v1/admin/tenants"))["items"]
        except ApiError as exc:
            if exc.status == 401:
                raise
            error = messages.problem_message(exc)
        storage = await asyncio.gather(*(call(request, session, "GET", f"/api/v1/storage-quotas/{t['id']}")
                                         for t in items), return_exceptions=True)
        for item, quota in zip(items, storage, strict=True):
            if isinstance(quota, ApiError) and quota.status == 401:
                raise quota
            if isinstance(quota, BaseException) and not isinstance(quota, ApiError):
                raise quota
            # None: upload did not answer for this tenant; the row says so and offers no form.
            item["storage"] = None if isinstance(quota, ApiError) else quota
        return web.render(request, "admin_tenants.html", session, tenants=items, error=error,
                          max_storage_mb=MAX_STORAGE_QUOTA_MB)

    @r.post("/admin/tenants/{tenant_id}/quota")
    async def set_quota(request: Request, tenant_id: str) -> Response:
        """`api_daily_quota` calls a day, or empty for the platform default."""
        session = web.session(request)
        form = await form_of(request, session)
        if form is None:
            return web.error_page(request, session, 403, messages.CSRF_REFUSED)
        target, raw = uuid_of(tenant_id), form.get("api_daily_quota", "").strip().replace(",", "")
        if target is None:
            return web.error_page(request, session, 404, messages.problem_message(404))
        if raw and not raw.isdigit():
            return web.error_page(request, session, 422, "하루 API 호출 한도는 0 이상의 정수로 입력하세요.")
        try:
            await call(request, session, "PATCH", f"/api/v1/admin/tenants/{target}",
                       json={"api_daily_quota": int(raw) if raw else None})
        except ApiError as exc:
            if exc.status == 401:
                raise
            return web.error_page(request, session, exc.status, messages.problem_message(exc))
        return RedirectResponse("/admin/tenants?msg=quota-set", status_code=303)

    @r.post("/admin/tenants/{tenant_id}/storage-quota")
    async def set_storage_quota(request: Request, tenant_id: str) -> Response:
        """`storage_quota_mb`, a whole number of MB (MiB); upload refuses one below the usage."""
        session = web.session(request)
        form = await form_of(request, session)
        if form is None:
            return web.error_page(request, session, 403, messages.CSRF_REFUSED)
        target, raw = uuid_of(tenant_id), form.get("storage_quota_mb", "").strip().replace(",", "")
        if target is None:
            return web.error_page(request, session, 404, messages.problem_message(404))
        if not raw.isdigit() or not 0 < int(raw) <= MAX_STORAGE_QUOTA_MB:
            return web.error_page(request, session, 422,
                                  f"저장 용량 한도는 1 이상 {MAX_STORAGE_QUOTA_MB:,} 이하의 MB 단위 정수로 입력하세요.")
        try:
            await call(request, session, "PUT", f"/api/v1/storage-quotas/{target}",
                       json={"quota_bytes": int(raw) * MB})
        except ApiError as exc:
            if exc.status == 401:
                raise
            used = exc.problem.get("used_bytes")
            if exc.status == 409 and isinstance(used, int):
                return web.error_page(request, session, 409,
                                      f"이 부서는 이미 {_mb(used)} MB를 쓰고 있습니다. 그보다 작은 한도는 정할 수 "
                                      "없습니다. 문서를 영구 삭제한 뒤 다시 시도하세요.")
            return web.error_page(request, session, exc.status, messages.problem_message(exc))
        return RedirectResponse("/admin/tenants?msg=storage-quota-set", status_code=303)

    return r
