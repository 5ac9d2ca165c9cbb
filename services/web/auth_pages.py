"""Login, re-login (from a dialog, keeping the page) and logout."""
from __future__ import annotations

import json
import re

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from . import messages
from .api import ApiError
from .core import Web, client_ip
from .session import csrf_ok, safe_next, same_origin

TENANT_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
USERNAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


def _check(tenant: str, username: str, password: str) -> dict[str, str]:
    """Korean messages by field, for what the token endpoint would refuse anyway."""
    errors = {}
    if not TENANT_SLUG.match(tenant):
        errors["tenant"] = "부서 코드는 영문 소문자, 숫자, 하이픈으로 된 2~63자입니다 (예: finance)."
    if not USERNAME.match(username):
        errors["username"] = "사용자 이름을 입력하세요 (영문, 숫자, . _ @ -)."
    if not password:
        errors["password"] = "비밀번호를 입력하세요."
    return errors


def router(web: Web) -> APIRouter:
    r = APIRouter()

    @r.get("/login")
    async def login_page(request: Request) -> Response:
        session = web.sessions.read(request)
        nxt = safe_next(request.query_params.get("next"))
        if session is not None:
            return RedirectResponse(nxt, status_code=303)
        return web.render(request, "login.html", None, next=nxt, values={}, errors={}, error=None)

    @r.post("/login")
    async def login(request: Request) -> Response:
        as_json = "application/json" in (request.headers.get("content-type") or "")
        if as_json:
            try:
                data = json.loads(await request.body())
            except ValueError:
                data = None
            if not isinstance(data, dict):
                return JSONResponse({"message": "요청이 올바르지 않습니다."}, status_code=422)
        else:
            data = dict(await request.form())
        tenant = str(data.get("tenant", "")).strip()
        username = str(data.get("username", "")).strip()
        password = str(data.get("password", ""))
        nxt = safe_next(str(data.get("next", "")))
        values = {"tenant": tenant, "username": username}
        error: str | None
        if not same_origin(request):
            error, errors, status = "다른 사이트에서 보낸 로그인 요청은 받지 않습니다.", {}, 403
        else:
            errors = _check(tenant, username, password)
            error, status = ("입력한 내용을 확인하세요." if errors else None), 422
        if error is None:
            try:
                token = await web.api.json("POST", "/api/v1/auth/token", None, client_ip=client_ip(request),
                                           json={"tenant": tenant, "username": username, "password": password})
            except ApiError as exc:
                error, status = messages.problem_message(exc), exc.status
            else:
                session = web.sessions.session_from_token(str(token["access_token"]))
                if session is None:
                    error, status = "발급된 토큰을 확인할 수 없습니다. 관리자에게 문의하세요.", 502
                else:
                    cookie = web.sessions.cookie_header(session.token, int(token.get("expires_in", 3600)))
                    if as_json:
                        out: Response = JSONResponse({"csrf": session.csrf, "expires_at": session.expires_at})
                    else:
                        out = RedirectResponse(nxt, status_code=303)
                    out.headers["Set-Cookie"] = cookie
                    out.headers["Cache-Control"] = "no-store"
                    return out
        if as_json:
            return JSONResponse({"message": error, "errors": errors}, status_code=status)
        return web.render(request, "login.html", None, status=status, next=nxt, values=values, errors=errors,
                          error=error)

    @r.post("/logout")
    async def logout(request: Request) -> Response:
        session = web.sessions.read(request)
        form = await request.form()
        if session is not None and not csrf_ok(request, session, str(form.get("csrf", ""))):
            return web.error_page(request, session, 403, messages.CSRF_REFUSED)
        out = RedirectResponse("/login?msg=logged-out", status_code=303)
        out.headers["Set-Cookie"] = web.sessions.clear_header()
        return out

    return r
