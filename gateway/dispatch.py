"""The proxy endpoint: route the request, run the access phase of its plugins, count the call
towards the tenant's daily API quota, wait for the tenant's turn at the upstream, forward it."""
from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from fastapi import Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from services.common.context import current_request_id
from services.common.errors import ProblemError

from .fairness import TenantFairness
from .metrics import PROXY_LATENCY, PROXY_REQUESTS
from .pipeline import RUNTIME_KEY, context_of
from .plugins.request_size_limiting.handler import has_body, limited, parse_content_length
from .proxy import ForwardedRequest, Proxy
from .quotas import DailyQuotas
from .router import MethodNotAllowed, NoRoute

log = logging.getLogger("gateway")


def reject_dot_segments(path: str) -> None:
    """'.' and '..' segments could make a path look like one route and act as another."""
    if any(segment in (".", "..") for segment in path.split("/")):
        raise ProblemError(400, "the path must not contain '.' or '..' segments", field="path")


def proxy_endpoint(proxy: Proxy, fairness: TenantFairness,
                   quotas: DailyQuotas | None) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        ctx = context_of(request.scope)
        runtime = request.scope["state"][RUNTIME_KEY]
        ctx.request = request
        started = time.perf_counter()
        status = 500
        try:
            reject_dot_segments(request.url.path)
            try:
                ctx.match = runtime.router.match(request.method, request.url.path)
            except NoRoute:
                raise ProblemError(404, f"no route matches {request.url.path}") from None
            except MethodNotAllowed as exc:
                raise ProblemError(405, f"{request.method} is not allowed here",
                                   headers={"Allow": ", ".join(exc.allowed)}) from None
            parse_content_length(request.headers.get("content-length"))  # 400 for a malformed one
            await runtime.pipeline.access(ctx)
            if ctx.exit_response is not None:
                status = ctx.exit_response.status_code
                return ctx.exit_response
            tenant = ctx.principal.tenant_id if ctx.principal is not None else None
            if quotas is not None and tenant is not None:
                usage = await quotas.consume(tenant)
                if usage is not None:
                    ctx.response_headers += usage.headers(datetime.now(UTC), quotas.warning_percent)
            body = limited(request.stream(), ctx.body_limit) if has_body(request.headers) else None
            balancer = proxy.balancer_for(ctx.match.entry.service)
            hash_key = balancer.hash_key(ctx.principal.user_id if ctx.principal else None, ctx.client_ip,
                                         request.headers) if balancer.algorithm == "consistent-hashing" else None
            forwarded = ForwardedRequest(body=body, extra_headers=ctx.upstream_headers,
                                         request_id=current_request_id(),
                                         drop_headers=frozenset(ctx.shared.get("drop_headers", ())), hash_key=hash_key)
            async with fairness.slot(ctx.match.entry.service.host, tenant):
                sent = time.perf_counter()
                response = await proxy.forward(request, ctx.match, forwarded)
                ctx.upstream_latency_s = time.perf_counter() - sent
            status = response.status_code
            return response
        except ProblemError as exc:
            status = exc.status
            raise
        except ClientDisconnect:
            status = 499  # nginx's "client closed request"
            log.info("client went away during the request", extra={"route": ctx.route_name})
            return Response(status_code=400)
        finally:
            PROXY_REQUESTS.labels(ctx.route_name, ctx.service_name, str(status)).inc()
            PROXY_LATENCY.labels(ctx.route_name, ctx.service_name).observe(time.perf_counter() - started)

    return endpoint
