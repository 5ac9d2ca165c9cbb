"""The web UI app: pages, static files, security headers, and what happens without a session."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.middleware.gzip import GZipMiddleware
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.errors import problem_body
from services.common.http import create_app

from . import admin_datasets, admin_identity, admin_pages, admin_queue, admin_training, auth_pages, messages, pages
from .api import ApiError
from .core import STATIC_DIR, LoginRequired, Web, login_redirect
from .settings import WebSettings

log = logging.getLogger("web")

# No inline script or style anywhere: scripts and styles come from this origin's files only.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; font-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]


class SecurityHeaders:
    """Adds the policy to every answer; pages are never cached, static files for a long time
    (their URLs carry a content hash, the font files a version)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"
                           or not static]
                have = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in have]
                if static and message.get("status") == 200:
                    headers.append((b"cache-control", b"public, max-age=31536000, immutable"))
                elif b"cache-control" not in have:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, wrapped)


class CompressExceptDownloads:
    """gzip for pages, scripts and styles; downloads stream through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.gzip = GZipMiddleware(app, minimum_size=1000)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] == "http" and not path.endswith("/download") and not path.endswith(".woff2"):
            await self.gzip(scope, receive, send)
        else:
            await self.app(scope, receive, send)


OPERATIONAL_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class OperationalPathsNotProxied:
    """/healthz, /readyz and /metrics answer the platform's own probes on the replica's port
    (the stack, the gateway's active checks) but 404 to a request the gateway proxied from a
    client (it carries the X-Forwarded-Path the gateway sets on every proxied request): the UI's
    route `/` would otherwise make them public."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope.get("path") in OPERATIONAL_PATHS
                and any(k.lower() == b"x-forwarded-path" for k, _ in scope.get("headers", []))):
            response = JSONResponse(problem_body(404, "no such page"), status_code=404,
                                    media_type="application/problem+json")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def build_app(settings: WebSettings) -> FastAPI:
    web = Web(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await web.api.close()

    async def gateway_reachable() -> None:
        """Any HTTP answer of the gateway will do (the API answers 401 without a token)."""
        await web.api.client.head("/api/v1/quota", timeout=3)

    # No API docs: the web's routes are pages and forms, not an API.
    app = create_app("web", title="doctag web", lifespan=lifespan, readiness={"gateway": gateway_reachable},
                     api_docs=False)
    app.state.web = web
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(auth_pages.router(web))
    app.include_router(pages.router(web))
    app.include_router(admin_pages.router(web))
    app.include_router(admin_identity.router(web))
    app.include_router(admin_queue.router(web))
    app.include_router(admin_datasets.router(web))
    app.include_router(admin_training.router(web))

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        return login_redirect(request, web, exc.expired)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        if exc.status == 401:
            return login_redirect(request, web, True)
        # The pages let refusals they have nothing special to say about come here: the error page.
        log.info("API refusal", extra={"status": exc.status, "path": request.url.path})
        return web.error_page(request, web.sessions.read(request), exc.status if exc.status >= 400 else 502,
                              messages.problem_message(exc))

    app.add_middleware(CompressExceptDownloads)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(OperationalPathsNotProxied)
    return app
