"""Assembles the gateway app: the shared operational surface (/healthz, /readyz,
/metrics, problem+json, request ids, JSON logs), the token endpoint, and a catch-all
that runs the plugins of the matched route and proxies.

Plugin order follows Kong's priorities: correlation-id (outermost, before routing),
then jwt (1450), request-size-limiting (951), acl (950).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from services.common import audit
from services.common.auth import ensure_keypair
from services.common.context import current_request_id, tenant_id_var
from services.common.db import Database
from services.common.errors import ProblemError
from services.common.http import create_app

from .config import ConfigError, KongConfig, resolve_secret_value
from .metrics import PROXY_LATENCY, PROXY_REQUESTS
from .plugins import acl, size_limit
from .plugins.correlation_id import CorrelationIdMiddleware
from .plugins.jwt_auth import Authenticated, JwtVerifier, RsaCredential
from .proxy import ForwardedRequest, Proxy
from .router import MethodNotAllowed, NoRoute, RouteMatch, Router, global_plugins
from .settings import GatewaySettings
from .tokens import TokenIssuer, token_router

log = logging.getLogger("gateway")
DENIAL_AUDIT_TIMEOUT_S = 1.0

PROXY_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def prepare_keys(settings: GatewaySettings) -> tuple[Path, Path]:
    """Makes sure the signing key pair exists (generated on first start, never committed)."""
    private, public = settings.private_key_path, settings.public_key_path
    if private.exists() and public.exists():
        return private, public
    if private.parent != public.parent or (private.name, public.name) != ("jwt_private.pem", "jwt_public.pem"):
        raise ConfigError(f"JWT key files {private} / {public} are missing; they are only generated when both "
                          "are the default names jwt_private.pem / jwt_public.pem in one directory")
    ensure_keypair(private.parent)
    return private, public


def resolve_credentials(config: KongConfig, settings: GatewaySettings) -> list[RsaCredential]:
    """The consumers' jwt_secrets with `{file:...}` references read.
    `${DOCTAG_JWT_PUBLIC_KEY_FILE}` defaults to the gateway's own public key file."""
    env = {**os.environ, "DOCTAG_JWT_PUBLIC_KEY_FILE": str(settings.public_key_path)}
    credentials = []
    for consumer in config.consumers:
        for secret in consumer.jwt_secrets:
            pem = resolve_secret_value(secret.rsa_public_key, env)
            try:
                serialization.load_pem_public_key(pem.encode())
            except ValueError:
                raise ConfigError(f"consumer {consumer.username}: jwt_secret '{secret.key}' has no valid "
                                  "PEM public key in rsa_public_key") from None
            credentials.append(RsaCredential(consumer=consumer.username, key=secret.key, public_key_pem=pem))
    return credentials


def has_body(request: Request) -> bool:
    return "content-length" in request.headers or "transfer-encoding" in request.headers


def _reject_dot_segments(path: str) -> None:
    """'.' and '..' segments could make a path look like one route and act as another."""
    if any(segment in (".", "..") for segment in path.split("/")):
        raise ProblemError(400, "the path must not contain '.' or '..' segments", field="path")


def build_app(settings: GatewaySettings, config: KongConfig) -> FastAPI:
    private_key, _ = prepare_keys(settings)
    router = Router(config)
    proxy = Proxy(config, cooldown_seconds=settings.gateway_unhealthy_cooldown_seconds, tls=settings.upstream_ssl())
    verifier = JwtVerifier(resolve_credentials(config, settings), audience=settings.jwt_audience)
    db = Database(settings.dsn(), min_size=settings.db_pool_min, max_size=settings.db_pool_max)
    issuer = TokenIssuer(db, private_key_file=private_key, issuer=settings.jwt_issuer,
                         audience=settings.jwt_audience, ttl_seconds=settings.token_ttl_seconds)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await db.open()
        await proxy.start()
        log.info("gateway started", extra={"routes": len(router.entries), "upstreams": sorted(proxy.balancers),
                                           "config": str(settings.gateway_config)})
        try:
            yield
        finally:
            await proxy.close()
            await db.close()

    async def config_loaded() -> None:
        if not router.entries:
            raise RuntimeError("the configuration has no routes")

    app = create_app("gateway", title="doctag API gateway", lifespan=lifespan,
                     readiness={"database": db.ping, "config": config_loaded})
    app.state.router = router
    app.state.proxy = proxy
    app.include_router(token_router(issuer))

    async def record_denial(auth: Authenticated, request: Request, match: RouteMatch) -> None:
        """Appends `access.denied` to the caller's tenant's audit log. Best effort, like logins: a
        failure to write it is logged as an error and the caller still gets the 403, after at
        most DENIAL_AUDIT_TIMEOUT_S (a slow database must not hold every refusal for the pool's
        30 s connection timeout)."""
        principal = auth.principal
        try:
            async with asyncio.timeout(DENIAL_AUDIT_TIMEOUT_S), db.tenant_transaction(principal.tenant_id) as conn:
                await audit.record(conn, action=audit.ACCESS_DENIED, outcome=audit.DENIED,
                                   actor_id=principal.user_id, actor_name=principal.username or None,
                                   request_id=current_request_id(),
                                   details={"method": request.method, "path": request.url.path,
                                            "route": match.entry.route.name, "roles": list(principal.roles)})
        except Exception:
            log.exception("could not record the refused request in the audit log")

    async def run_plugins(request: Request, match: RouteMatch) -> ForwardedRequest:
        plugins = match.entry.plugins
        extra: list[tuple[str, str]] = []
        auth: Authenticated | None = None

        jwt_config = plugins.get("jwt")
        if jwt_config is not None and not (request.method == "OPTIONS" and not jwt_config.run_on_preflight):
            auth = verifier.authenticate(request.headers, jwt_config)
            principal = auth.principal
            tenant_id_var.set(principal.tenant_id)
            extra += [("X-Consumer-ID", principal.user_id), ("X-Consumer-Username", principal.username),
                      ("X-Credential-Identifier", auth.credential.key), ("X-Tenant-ID", principal.tenant_id)]

        content_length = size_limit.parse_content_length(request.headers.get("content-length"))
        limit: int | None = None
        size_config = plugins.get("request-size-limiting")
        if size_config is not None:
            size_limit.check_declared(content_length, has_body(request), size_config)
            limit = size_config.limit_bytes

        acl_config = plugins.get("acl")
        if acl_config is not None:
            groups = list(auth.principal.roles) if auth else None
            try:
                acl.enforce(groups, acl_config)
            except ProblemError as exc:
                if exc.status == 403 and auth is not None:
                    await record_denial(auth, request, match)
                raise
            if groups is not None and not acl_config.hide_groups_header:
                extra.append(("X-Consumer-Groups", ", ".join(groups)))

        body = size_limit.limited(request.stream(), limit) if has_body(request) else None
        return ForwardedRequest(body=body, extra_headers=extra, request_id=current_request_id())

    async def proxy_endpoint(request: Request) -> Response:
        started = time.perf_counter()
        route_label = service_label = "none"
        status = 500
        try:
            _reject_dot_segments(request.url.path)
            try:
                match = router.match(request.method, request.url.path)
            except NoRoute:
                raise ProblemError(404, f"no route matches {request.url.path}") from None
            except MethodNotAllowed as exc:
                raise ProblemError(405, f"{request.method} is not allowed here",
                                   headers={"Allow": ", ".join(exc.allowed)}) from None
            route_label, service_label = match.entry.route.name, match.entry.service.name
            forwarded = await run_plugins(request, match)
            response = await proxy.forward(request, match, forwarded)
            status = response.status_code
            return response
        except ProblemError as exc:
            status = exc.status
            raise
        except ClientDisconnect:
            status = 499  # nginx's "client closed request"
            log.info("client went away during the request", extra={"route": route_label})
            return Response(status_code=400)
        finally:
            PROXY_REQUESTS.labels(route_label, service_label, str(status)).inc()
            PROXY_LATENCY.labels(route_label, service_label).observe(time.perf_counter() - started)

    app.add_api_route("/{path:path}", proxy_endpoint, methods=PROXY_METHODS, include_in_schema=False)

    correlation = global_plugins(config).get("correlation-id")
    if correlation is not None:
        app.add_middleware(CorrelationIdMiddleware, config=correlation)
    return app
