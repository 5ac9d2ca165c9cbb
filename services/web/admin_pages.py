"""Administrators' pages: the department's storage and audit log (tenant_admin), the model
registry with each version's evaluation, promotion of a candidate, rollback of an alias and a
candidate's shadow mode with its report (platform_admin; admin_shadow.py). Only what the API offers today."""
from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from . import admin_shadow, messages
from .api import ApiError
from .core import Web, client_ip, day, day_range
from .session import Session

MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
AUDIT_ACTIONS = tuple(messages.ACTION_LABELS)


def router(web: Web) -> APIRouter:
    r = APIRouter()

    @r.get("/admin")
    async def admin_home(request: Request, action: str | None = None, actor: str | None = None,
                         since: str | None = None, until: str | None = None, cursor: str | None = None) -> Response:
        session = web.session(request)
        if not session.is_tenant_admin:
            return web.error_page(request, session, 403, "부서 관리자만 볼 수 있는 화면입니다.")
        since_day, until_day = day(since), day(until)
        filters: dict[str, str | None] = {
            "action": action if action in AUDIT_ACTIONS else None, "actor": (actor or "").strip()[:200] or None,
            "since": since_day.isoformat() if since_day else None,
            "until": until_day.isoformat() if until_day else None}
        params: dict[str, Any] = {"limit": 50, **day_range(since_day, until_day)}
        for key in ("action", "actor"):
            if filters[key]:
                params[key] = filters[key]
        if cursor:
            params["cursor"] = cursor
        quota = audit = None
        errors = []
        try:
            quota = await web.api.json("GET", "/api/v1/quota", session.token, client_ip=client_ip(request))
        except ApiError as exc:
            if exc.status == 401:
                raise
            errors.append(messages.problem_message(exc))
        try:
            audit = await web.api.json("GET", "/api/v1/audit", session.token, params=params,
                                       client_ip=client_ip(request))
        except ApiError as exc:
            if exc.status == 401:
                raise
            errors.append(messages.problem_message(exc))
        return web.render(request, "admin.html", session, quota=quota, audit=audit, errors=errors, filters=filters,
                          actions=AUDIT_ACTIONS)

    async def models_page(request: Request, session: Session, *, status: int = 200,
                          shadow_form: dict[str, Any] | None = None) -> Response:
        """The models screen; `shadow_form` (model, values, errors, error) re-shows a refused switch."""
        async def fetch(path: str) -> Any:
            return await web.api.json("GET", path, session.token, client_ip=client_ip(request))

        error = None
        found: list[dict[str, Any]] = []
        shadow: dict[str, dict[str, Any]] = {}
        names: dict[str, str] = {}
        try:
            listing = await fetch("/api/v1/models")
            for model in listing.get("models") or []:
                versions = await fetch(f"/api/v1/models/{model['name']}/versions")
                found.append({**model, "version_list": list(reversed(versions.get("versions") or []))})
            shadow = await admin_shadow.reports(found, fetch)
            names = await admin_shadow.tenant_names(shadow, fetch)
        except ApiError as exc:
            if exc.status == 401:
                raise
            error = messages.problem_message(exc)
        return web.render(request, "models.html", session, status=status, models=found, error=error,
                          shadow=shadow, tenant_names=names, shadow_form=shadow_form or {})

    @r.get("/admin/models")
    async def models(request: Request) -> Response:
        session = web.session(request)
        if not session.is_platform_admin:
            return web.error_page(request, session, 403, "플랫폼 관리자만 볼 수 있는 화면입니다.")
        return await models_page(request, session)

    @r.post("/admin/models/{name}/shadow")
    async def switch_shadow(request: Request, name: str) -> Response:
        """Shadow mode on or off for the model's candidate, with the share of live texts it scores."""
        session = web.session(request)
        form = await web.posted_form(request, session)
        if form is None:
            return web.error_page(request, session, 403, messages.CSRF_REFUSED)
        if not session.is_platform_admin:
            return web.error_page(request, session, 403, messages.SHADOW_REFUSED)
        if not MODEL_NAME.match(name):
            return web.error_page(request, session, 422, "모델 이름이 올바르지 않습니다.")
        values = {k: form.get(k, "") for k in admin_shadow.SHADOW_FIELDS}
        body, errors = admin_shadow.parse_shadow_form(form)
        if errors:
            return await models_page(request, session, status=422, shadow_form={
                "model": name, "values": values, "errors": errors, "error": None})
        try:
            await web.api.json("PUT", f"/api/v1/models/{name}/shadow", session.token, json=body,
                               client_ip=client_ip(request))
        except ApiError as exc:
            if exc.status == 401:
                raise
            error: str | None
            if exc.status in (403, 404):
                errors, error = {}, messages.SHADOW_REFUSED if exc.status == 403 else messages.MODEL_GONE
            else:
                errors, error = messages.form_errors(exc, admin_shadow.SHADOW_FIELDS)
            return await models_page(request, session, status=exc.status, shadow_form={
                "model": name, "values": values, "errors": errors, "error": error})
        flash = "shadow-on" if body["enabled"] else "shadow-off"
        return RedirectResponse(f"/admin/models?msg={flash}#shadow-{name}", status_code=303)

    @r.post("/admin/models/{name}/alias")
    async def set_alias(request: Request, name: str) -> Response:
        session = web.session(request)
        form = await web.posted_form(request, session)
        if form is None:
            return web.error_page(request, session, 403, messages.CSRF_REFUSED)
        alias, version = form.get("alias", ""), form.get("version", "")
        if not MODEL_NAME.match(name) or not ALIAS.match(alias) or not version.isdigit():
            return web.error_page(request, session, 422, "모델 이름, 별칭 또는 버전이 올바르지 않습니다.")
        try:
            await web.api.send("PUT", f"/api/v1/models/{name}/aliases/{alias}", session.token,
                               json={"version": int(version)}, client_ip=client_ip(request))
        except ApiError as exc:
            if exc.status == 401:
                raise
            return web.error_page(request, session, exc.status, messages.problem_message(exc))
        return RedirectResponse("/admin/models?msg=alias-set", status_code=303)

    @r.post("/admin/models/{name}/rollback")
    async def rollback(request: Request, name: str) -> Response:
        """The alias back to where it pointed before its last move (the registry remembers it)."""
        session = web.session(request)
        form = await web.posted_form(request, session)
        if form is None:
            return web.error_page(request, session, 403, messages.CSRF_REFUSED)
        alias = form.get("alias", "")
        if not MODEL_NAME.match(name) or not ALIAS.match(alias):
            return web.error_page(request, session, 422, "모델 이름 또는 별칭이 올바르지 않습니다.")
        try:
            await web.api.send("POST", f"/api/v1/models/{name}/aliases/{alias}/rollback", session.token,
                               client_ip=client_ip(request))
        except ApiError as exc:
            if exc.status == 401:
                raise
            message = (f"'{alias}' 별칭에는 되돌아갈 이전 버전이 없습니다." if exc.status == 404
                       else messages.problem_message(exc))
            return web.error_page(request, session, exc.status, message)
        return RedirectResponse("/admin/models?msg=alias-rolled-back", status_code=303)

    return r
