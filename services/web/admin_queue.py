"""The tagging queue screen (upload's `/api/v1/tagging` API): every department's queue for a
platform administrator (or one, chosen), its own for a department administrator; retrying a
failed or dead-lettered document is a CSRF-checked form. `/admin/queue/live` gives the screen's
numbers as JSON for its polling (static/app.js), so they refresh without reloading the page."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from . import messages
from .api import ApiError
from .core import Web, client_ip, link, uuid_of

DEAD_LETTER_REASONS = {"rejected": "처리 불가로 거부됨", "delivery_limit": "재시도 한도 초과", "expired": "시간 초과",
                       "maxlen": "대기열 가득 참"}


def live_numbers(body: dict[str, Any]) -> dict[str, Any]:
    """What the polling updates in place: counts, rate, the broker's depths (numbers only; the
    failed and dead-letter lists change on a reload, and the page says when they did)."""
    docs, rate, broker = body["documents"], body["rate"], body.get("broker")
    return {"queued": docs["queued"], "processing": docs["processing"], "failed": docs["failed"],
            "oldest_queued_at": messages.local_time(docs["oldest_queued_at"]) if docs["oldest_queued_at"] else None,
            "tagged_last_hour": rate["tagged_last_hour"], "tagged_per_minute": rate["tagged_per_minute"],
            "failed_last_hour": rate["failed_last_hour"],
            "broker": {k: broker[k] for k in ("jobs_waiting", "workers", "dead_lettered")} if broker else None,
            "failed_ids": [d["id"] for d in body.get("failed") or []],
            "dead_letter_ids": [d.get("document_id") for d in body.get("dead_letters") or []]}


def router(web: Web) -> APIRouter:
    r = APIRouter()

    @r.get("/admin/queue")
    async def queue(request: Request, tenant: str | None = None) -> Response:
        session = web.session(request)
        if not session.is_tenant_admin:
            return web.error_page(request, session, 403, "관리자만 볼 수 있는 화면입니다.")
        chosen = uuid_of(tenant) if session.is_platform_admin else None
        body, error, names = None, None, {}
        try:
            body = await web.api.json("GET", "/api/v1/tagging/queue", session.token, client_ip=client_ip(request),
                                      params={"tenant_id": chosen} if chosen else None)
        except ApiError as exc:
            if exc.status == 401:
                raise
            error = messages.problem_message(exc)
        if session.is_platform_admin:
            try:
                tenants = await web.api.json("GET", "/api/v1/admin/tenants", session.token,
                                             client_ip=client_ip(request))
                names = {t["id"]: t for t in tenants.get("items") or []}
            except ApiError as exc:
                if exc.status == 401:
                    raise
        return web.render(request, "admin_queue.html", session, q=body, error=error, names=names, chosen=chosen,
                          reasons=DEAD_LETTER_REASONS)

    @r.get("/admin/queue/live")
    async def live(request: Request, tenant: str | None = None) -> Response:
        session = web.session(request)
        if not session.is_tenant_admin:
            return JSONResponse({"message": "관리자만 볼 수 있는 화면입니다."}, status_code=403)
        chosen = uuid_of(tenant) if session.is_platform_admin else None
        try:
            body = await web.api.json("GET", "/api/v1/tagging/queue", session.token, client_ip=client_ip(request),
                                      params={"tenant_id": chosen} if chosen else None)
        except ApiError as exc:
            if exc.status == 401:
                return JSONResponse({"login": True, "message": messages.FLASH["expired"]}, status_code=401)
            return JSONResponse({"message": messages.problem_message(exc)}, status_code=exc.status)
        return JSONResponse(live_numbers(body), headers={"Cache-Control": "no-store"})

    @r.post("/admin/queue/retry")
    async def retry(request: Request) -> Response:
        session = web.session(request)
        form = await web.posted_form(request, session)
        if form is None:
            return web.error_page(request, session, 403, messages.CSRF_REFUSED)
        doc_id, tenant_id = uuid_of(form.get("document_id")), uuid_of(form.get("tenant_id"))
        if doc_id is None:
            return web.error_page(request, session, 404, messages.problem_message(404))
        params = {"tenant_id": tenant_id} if tenant_id and tenant_id != session.tenant_id else None
        try:
            await web.api.send("POST", f"/api/v1/tagging/documents/{doc_id}/retry", session.token, params=params,
                               client_ip=client_ip(request))
        except ApiError as exc:
            if exc.status == 401:
                raise
            message = ("이미 태깅되었거나 아직 처리 중인 문서라 다시 시도하지 않았습니다." if exc.status == 409
                       else messages.problem_message(exc))
            return web.error_page(request, session, exc.status, message)
        back = uuid_of(form.get("back_tenant"))
        return RedirectResponse(link("/admin/queue", {"tenant": back, "msg": "retried"}), status_code=303)

    return r
