"""FastAPI app factory: request ids, JSON access logs, metrics, /healthz, /readyz, problem+json.

Every HTTP service builds its app with `create_app` so the operational surface is
identical everywhere.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .context import REQUEST_ID_HEADER, new_request_id, request_id_var, tenant_id_var
from .errors import ProblemError, install_problem_handlers, problem_response
from .metrics import HTTP_LATENCY, HTTP_REQUESTS

ReadinessCheck = Callable[[], Awaitable[None]]
access_log = logging.getLogger("doctag.access")


class RequestContextMiddleware:
    """Takes or makes the request id, echoes it, times the request, counts it by route."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = headers.get(REQUEST_ID_HEADER.lower()) or new_request_id()
        rid_token = request_id_var.set(rid[:128])
        tenant_token = tenant_id_var.set(None)
        start = time.perf_counter()
        status_holder = {"status": 500}
        started = {"done": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                started["done"] = True
                status_holder["status"] = message["status"]
                hdrs = list(message.get("headers", []))
                hdrs.append((REQUEST_ID_HEADER.encode(), rid[:128].encode("latin-1")))
                message["headers"] = hdrs
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            # Answered here, inside the request's context, so the 500 carries the same request id
            # in its header, its body and the log line (Starlette's outermost error handler runs
            # after this context is gone). After the response has started, all that can be done
            # is to let the connection drop.
            access_log.exception("unhandled error", extra={"method": scope.get("method"), "path": scope.get("path")})
            if started["done"]:
                raise
            await problem_response(500, "an unexpected error occurred; quote the request id to an operator",
                                   instance=scope.get("path"))(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            route_name = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            HTTP_REQUESTS.labels(self.service, method, route_name, str(status_holder["status"])).inc()
            HTTP_LATENCY.labels(self.service, method, route_name).observe(elapsed)
            if route_name not in ("/healthz", "/metrics"):
                access_log.info(
                    "request",
                    extra={"method": method, "path": scope.get("path"), "route": route_name,
                           "status": status_holder["status"], "duration_ms": round(elapsed * 1000, 1)},
                )
            request_id_var.reset(rid_token)
            tenant_id_var.reset(tenant_token)


class BodyLimitMiddleware:
    """The gateway's `request-size-limiting` on a service's own port, so that a caller who reaches
    the port directly gets no more than through the gateway: a declared Content-Length over the
    limit answers 413 at once; a body without one is counted as it is read and refused (413) as
    soon as it passes the limit. The limit is the one of the longest matching path prefix in
    `limits`, else `default`."""

    def __init__(self, app: ASGIApp, default: int, limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.default = default
        self.limits = sorted((limits or {}).items(), key=lambda item: -len(item[0]))

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.limits:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        declared = [v for k, v in scope.get("headers", []) if k.lower() == b"content-length"]
        if declared:
            value = declared[0].decode("latin-1").strip()
            if not value.isascii() or not value.isdigit():
                detail = "Content-Length must be a non-negative integer"
                await problem_response(400, detail, errors=[{"field": "Content-Length", "message": detail}])(
                    scope, receive, send)
                return
            if int(value) > limit:
                await _too_large(limit)(scope, receive, send)
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ProblemError(413, f"the request body is larger than the allowed {limit} bytes",
                                       extra={"max_bytes": limit})
            return message

        await self.app(scope, counting_receive, send)


def _too_large(limit: int) -> JSONResponse:
    return problem_response(413, f"the request body is larger than the allowed {limit} bytes",
                            extra={"max_bytes": limit})


def create_app(
    service: str,
    *,
    title: str,
    readiness: dict[str, ReadinessCheck] | None = None,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[Any]] | None = None,
    version: str = "1",
    max_body_bytes: int | None = None,
    body_limits: dict[str, int] | None = None,
    api_docs: bool = True,
    operational_routes: bool = True,
) -> FastAPI:
    """An app with the shared middleware and the /healthz, /readyz and /metrics routes.

    `readiness` maps a dependency name to an async check that raises when it is unreachable.
    `max_body_bytes` (with per-path-prefix `body_limits`) limits request bodies as the gateway does;
    `api_docs=False` serves neither /docs nor /openapi.json. `operational_routes=False` leaves out
    those three routes and the API docs (the gateway's proxy port, where every path belongs to the
    upstreams; it serves them on its status port).
    """
    docs = api_docs and operational_routes
    # FastAPI's built-in OpenTelemetry is off: the platform's metrics are Prometheus, and with no
    # OTel provider configured, FastAPI looked one up (entry points, imports) on every request.
    app = FastAPI(title=title, version=version, lifespan=lifespan, redoc_url=None,
                  telemetry={"tracing": False, "metrics": False, "logs": False},
                  openapi_url="/openapi.json" if docs else None, docs_url="/docs" if docs else None)
    if max_body_bytes is not None:
        app.add_middleware(BodyLimitMiddleware, default=max_body_bytes, limits=body_limits)
    app.add_middleware(RequestContextMiddleware, service=service)
    install_problem_handlers(app)
    checks = dict(readiness or {})
    app.state.readiness_checks = checks
    if not operational_routes:
        return app

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        results: dict[str, str] = {}
        ok = True
        for name, check in app.state.readiness_checks.items():
            try:
                await check()
                results[name] = "ok"
            except Exception as exc:  # noqa: BLE001 - any failure means not ready
                ok = False
                results[name] = f"unavailable: {exc.__class__.__name__}: {exc}"[:300]
        return JSONResponse({"status": "ready" if ok else "not ready", "checks": results},
                            status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
