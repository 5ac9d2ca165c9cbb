"""The browser session: the access token in an HttpOnly cookie, and CSRF protection.

Why a cookie and not the token in page memory: pages are rendered on the server from API
answers, so the server needs the token on every navigation, and the token must survive a
reload. The cookie is HttpOnly (no script, injected or not, can read it), SameSite=Strict (a
page of another site cannot make the browser send it, not even on a top-level link), Path=/
and, behind TLS (`DOCTAG_WEB_COOKIE_SECURE`), Secure with the `__Host-` prefix. The API itself
never accepts the cookie (the gateway reads bearer tokens from headers only), so the cookie
can only ever act through this UI.

CSRF: every state-changing request (POST) must carry a token derived from the session's
access token (HMAC-SHA256 keyed by the JWT, so it cannot be guessed without the cookie and
changes with every login), in a form field or the `X-CSRF-Token` header, and must not come
from another site (`Sec-Fetch-Site`/`Origin`). The login form has no session yet: SameSite and
the origin check protect it.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import jwt
from fastapi import Request

from services.common.auth import decode_token, principal_from_claims

COOKIE = "doctag_session"
SECURE_COOKIE = "__Host-doctag_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"


@dataclass(frozen=True)
class Session:
    token: str
    user_id: str
    tenant_id: str
    tenant_slug: str
    username: str
    roles: tuple[str, ...]
    expires_at: int

    @property
    def csrf(self) -> str:
        return csrf_token(self.token)

    @property
    def is_tenant_admin(self) -> bool:
        return bool({"tenant_admin", "platform_admin"} & set(self.roles))

    @property
    def manages_tenant(self) -> bool:
        """May manage the department's users and API keys (the admin API asks for tenant_admin itself)."""
        return "tenant_admin" in self.roles

    @property
    def is_platform_admin(self) -> bool:
        return "platform_admin" in self.roles

    @property
    def seconds_left(self) -> int:
        return max(0, self.expires_at - int(time.time()))


def csrf_token(token: str) -> str:
    digest = hmac.new(token.encode(), b"doctag-web-csrf-v1", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class SessionStore:
    """Reads and writes the session cookie; the token is verified like any service verifies it."""

    def __init__(self, *, public_key_file: Path, issuer: str, audience: str, secure: bool) -> None:
        self.public_key_file = public_key_file
        self.issuer = issuer
        self.audience = audience
        self.secure = secure
        self.cookie = SECURE_COOKIE if secure else COOKIE

    def session_from_token(self, token: str) -> Session | None:
        try:
            claims = decode_token(token, public_key_file=self.public_key_file, issuer=self.issuer,
                                  audience=self.audience)
            principal = principal_from_claims(claims)
        except (jwt.InvalidTokenError, KeyError, OSError):
            return None
        return Session(token=token, user_id=principal.user_id, tenant_id=principal.tenant_id,
                       tenant_slug=principal.tenant_slug, username=principal.username, roles=principal.roles,
                       expires_at=int(claims["exp"]))

    def read(self, request: Request) -> Session | None:
        token = request.cookies.get(self.cookie)
        return self.session_from_token(token) if token else None

    def cookie_header(self, token: str, max_age: int) -> str:
        attrs = [f"{self.cookie}={token}", "Path=/", f"Max-Age={max_age}", "HttpOnly", "SameSite=Strict"]
        if self.secure:
            attrs.append("Secure")
        return "; ".join(attrs)

    def clear_header(self) -> str:
        attrs = [f"{self.cookie}=", "Path=/", "Max-Age=0", "HttpOnly", "SameSite=Strict"]
        if self.secure:
            attrs.append("Secure")
        return "; ".join(attrs)


def same_origin(request: Request) -> bool:
    """False for a request a page of another site made the browser send."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("x-forwarded-host") or request.headers.get("host") or ""
    port = request.headers.get("x-forwarded-port")
    netloc = urlsplit(origin).netloc
    return netloc in {host, f"{host}:{port}" if port else host}


def csrf_ok(request: Request, session: Session, submitted: str | None) -> bool:
    if not same_origin(request):
        return False
    supplied = submitted or request.headers.get(CSRF_HEADER) or ""
    return hmac.compare_digest(supplied.encode(), session.csrf.encode())


def safe_next(raw: str | None) -> str:
    """Only a path of this site (never `//host` or a scheme), for redirects after login."""
    if not raw or not raw.startswith("/") or raw.startswith("//") or "\\" in raw or "\r" in raw or "\n" in raw:
        return "/documents"
    return raw
