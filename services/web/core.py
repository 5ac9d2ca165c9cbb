"""What every page handler shares: the API client, the session, templates, errors."""
from __future__ import annotations

import hashlib
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from . import messages
from .api import Api
from .session import CSRF_FIELD, Session, SessionStore, csrf_ok
from .settings import WebSettings
from .snippets import safe_snippet

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
TEMPLATE_DIR = HERE / "templates"


class LoginRequired(Exception):
    """No valid session: pages redirect to the login page, scripts get 401 JSON."""

    def __init__(self, expired: bool = False) -> None:
        super().__init__("login required")
        self.expired = expired


def _static_versions() -> dict[str, str]:
    """Content hashes of the UI's own static files, appended as `?v=` so a new release is
    fetched at once while every asset can be cached for a long time."""
    out = {}
    for path in STATIC_DIR.glob("*.*"):
        out[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return out


class Web:
    def __init__(self, settings: WebSettings) -> None:
        self.settings = settings
        self.api = Api(settings.web_api_url, timeout_s=settings.web_api_timeout_s,
                       upload_timeout_s=settings.web_upload_timeout_s)
        self.sessions = SessionStore(public_key_file=settings.public_key_path, issuer=settings.jwt_issuer,
                                     audience=settings.jwt_audience, secure=settings.web_cookie_secure)
        self.env = Environment(loader=FileSystemLoader(str(TEMPLATE_DIR)),
                               autoescape=select_autoescape(["html"], default=True),
                               trim_blocks=True, lstrip_blocks=True)
        versions = _static_versions()
        self.env.globals.update(
            static=lambda name: f"/static/{name}" + (f"?v={versions[name]}" if name in versions else ""),
            status_labels=messages.STATUS_LABELS, role_labels=messages.ROLE_LABELS,
            action_labels=messages.ACTION_LABELS, outcome_labels=messages.OUTCOME_LABELS,
            pii_labels=messages.PII_LABELS, dataset_status_labels=messages.DATASET_STATUS_LABELS,
            dataset_source_labels=messages.DATASET_SOURCE_LABELS, gate_issue_labels=messages.GATE_ISSUE_LABELS,
            task_labels=messages.TASK_LABELS, priority_labels=messages.PRIORITY_LABELS,
            alias_labels=messages.ALIAS_LABELS, shadow_labels=messages.SHADOW_REPORT_LABELS,
            shadow_state_labels=messages.SHADOW_STATE_LABELS, no_tenant_label=messages.NO_TENANT_LABEL,
        )
        self.env.filters.update(size=messages.file_size, kst=messages.local_time, percent=messages.percent,
                                failure=messages.failure_reason, details=messages.details,
                                metric_lines=messages.metric_lines, duration=messages.duration,
                                metric_sets=messages.metric_sets, gate_note=messages.gate_note,
                                share_percent=messages.share_percent,
                                snippet=safe_snippet, urlquote=lambda v: quote(str(v), safe=""))
        self.env.globals["query"] = link

    def session(self, request: Request) -> Session:
        session = self.sessions.read(request)
        if session is None:
            raise LoginRequired(expired=self.sessions.cookie in request.cookies)
        return session

    def render(self, request: Request, name: str, session: Session | None, *, status: int = 200,
               **context: Any) -> HTMLResponse:
        flash = messages.FLASH.get(request.query_params.get("msg", ""))
        body = self.env.get_template(name).render(request=request, session=session, flash=flash,
                                                  path=request.url.path, **context)
        return HTMLResponse(body, status_code=status)

    def error_page(self, request: Request, session: Session | None, status: int, message: str) -> HTMLResponse:
        return self.render(request, "error.html", session, status=status, message=message, error_status=status)

    def refused(self, request: Request, session: Session, who: str) -> HTMLResponse:
        """403: the screen is for `who` (the roles named in Korean) only."""
        return self.error_page(request, session, 403, f"{who}만 볼 수 있는 화면입니다.")

    async def posted_form(self, request: Request, session: Session, *,
                          lists: tuple[str, ...] = ()) -> dict[str, Any] | None:
        """A posted form's fields as text (every value of the names in `lists`), or None when its
        CSRF token or origin is not this session's."""
        form = await request.form()
        fields: dict[str, Any] = {k: str(v) for k, v in form.items()}
        for name in lists:
            fields[name] = [str(v) for v in form.getlist(name)]
        return fields if csrf_ok(request, session, fields.get(CSRF_FIELD)) else None

    async def call(self, request: Request, session: Session, method: str, path: str, **kwargs: Any) -> Any:
        """The platform API as the signed-in user, the user's address passed on; the JSON answer."""
        return await self.api.json(method, path, session.token, client_ip=client_ip(request), **kwargs)


def client_ip(request: Request) -> str | None:
    """The user's address: the X-Real-IP the gateway sets (it replaces any a client sends; with
    `make up` the web's port takes only the gateway's platform certificate), else the peer's.
    Passed on in X-Forwarded-For, which the gateway believes only from its trusted forwarders."""
    return request.headers.get("x-real-ip") or (request.client.host if request.client else None)


def wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "") or request.url.path.endswith("/status")


def login_redirect(request: Request, web: Web, expired: bool) -> Response:
    if wants_json(request) or request.method != "GET":
        if wants_json(request):
            response: Response = JSONResponse({"login": True, "message": messages.FLASH["expired"]}, status_code=401)
        else:
            response = RedirectResponse("/login?" + urlencode({"msg": "expired"}), status_code=303)
    else:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        params = {"next": target, **({"msg": "expired"} if expired else {})}
        response = RedirectResponse("/login?" + urlencode(params), status_code=303)
    if expired:
        response.headers["Set-Cookie"] = web.sessions.clear_header()
    return response


def link(base: str, params: dict[str, Any], **changes: Any) -> str:
    """A link to `base` with `params` changed (None removes a key; lists repeat it)."""
    merged = {**params, **changes}
    pairs: list[tuple[str, str]] = []
    for key, value in merged.items():
        if value is None or value == "" or value == []:
            continue
        if isinstance(value, list | tuple):
            pairs += [(key, str(v)) for v in value]
        else:
            pairs.append((key, str(value)))
    return base + ("?" + urlencode(pairs) if pairs else "")


def day(raw: str | None) -> date | None:
    """A `YYYY-MM-DD` date from a form, or None (also for anything else)."""
    try:
        return date.fromisoformat(raw) if raw else None
    except ValueError:
        return None


def day_range(since: date | None, until: date | None) -> dict[str, str]:
    """API `since`/`until` for whole days: from the first day's start to the end of the last."""
    out = {}
    if since is not None:
        out["since"] = since.isoformat()
    if until is not None:
        out["until"] = (until + timedelta(days=1)).isoformat()
    return out


def uuid_of(raw: str | None) -> str | None:
    """A UUID from a path or form, in its canonical form, or None."""
    try:
        return str(uuid.UUID(raw or ""))
    except ValueError:
        return None
