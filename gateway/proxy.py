"""Forwarding one request to an upstream target and streaming the answer back.

Bodies are streamed both ways (never held in memory). A request is retried on the
next target only when that is safe: the connection failed before any byte of the
request was sent (always safe, even for a POST with a streamed body), or the method
is idempotent and none of its body has been read yet. A read/write timeout answers
504 and is not retried (the upstream may still be working on it).
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

from fastapi import Request
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect
from starlette.responses import Response as StarletteResponse
from starlette.responses import StreamingResponse

from services.common.context import REQUEST_ID_HEADER
from services.common.errors import ProblemError
from services.common.tls import ReloadingSSLContext

from .balancer import TargetState, UpstreamBalancer
from .config import KongConfig, Service, Upstream
from .healthcheck import HealthChecks
from .metrics import RETRIES, UPSTREAM_LATENCY
from .plugins.request_size_limiting.handler import PayloadTooLarge, too_large
from .router import RouteMatch, prefix_matches
from .upstream_client import (
    ConnectError,
    ConnectTimeout,
    PoolTimeout,
    ReadTimeout,
    Response,
    Timeouts,
    TransportError,
    UpstreamClient,
    WriteTimeout,
)

log = logging.getLogger("gateway.proxy")

# RFC 9110 §7.6.1 hop-by-hop headers (plus the non-standard ones still seen in the wild).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
# Set by the gateway only; a client must not be able to inject them.
GATEWAY_OWNED = frozenset({
    "host", "expect", "x-request-id", "x-real-ip", "x-forwarded-host", "x-forwarded-proto",
    "x-forwarded-port", "x-forwarded-path", "x-forwarded-prefix",
    "x-consumer-id", "x-consumer-username", "x-consumer-custom-id", "x-consumer-groups",
    "x-credential-identifier", "x-anonymous-consumer", "x-authenticated-groups", "x-tenant-id",
})
# Replaced by the gateway's own on the way back (uvicorn adds date/server; the request id is echoed).
RESPONSE_OWNED = frozenset({"date", "server", "x-request-id"})
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# An answer with a declared length up to this is read whole and sent as one message (no streaming
# machinery for the small JSON most API calls return); longer or unknown lengths are streamed.
SMALL_BODY_BYTES = 64 * 1024


def _connection_tokens(raw: list[tuple[bytes, bytes]]) -> set[str]:
    """Headers named in Connection are hop-by-hop for this message too."""
    tokens: set[str] = set()
    for name, value in raw:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.decode("latin-1").split(",") if t.strip())
    return tokens


def filter_headers(raw: list[tuple[bytes, bytes]], drop: frozenset[str]) -> list[tuple[bytes, bytes]]:
    skip = HOP_BY_HOP | drop | _connection_tokens(raw)
    return [(k, v) for k, v in raw if k.decode("latin-1").lower() not in skip]


def split_host(host: str) -> tuple[str, str]:
    """'example.org:8080' -> ('example.org', '8080'); '[::1]' -> ('[::1]', '')."""
    match = _HOST_PORT.match(host)
    return (match.group(1), match.group(2) or "") if match else (host, "")


_HOST_PORT = re.compile(r"^(\[[^\]]*\]|[^:]*)(?::(\d+))?$")


class _ReplayGuard:
    """Hands the single-use request body to one attempt after another and remembers
    whether any attempt started reading it (after which the body cannot be replayed)."""

    def __init__(self, source: AsyncIterator[bytes] | None) -> None:
        self.source = source
        self.started = False

    def content(self) -> AsyncIterator[bytes] | None:
        return None if self.source is None else self._stream()

    async def _stream(self) -> AsyncIterator[bytes]:
        self.started = True
        assert self.source is not None
        async for chunk in self.source:
            yield chunk


@dataclass(frozen=True)
class UpstreamRequest:
    method: str
    scheme: str
    host: str
    port: int
    target: bytes
    headers: list[tuple[bytes, bytes]]
    content: AsyncIterator[bytes] | None
    timeouts: Timeouts


@dataclass(frozen=True)
class ForwardedRequest:
    """What the proxy sends: the body source and the headers the plugins added."""

    body: AsyncIterator[bytes] | None
    extra_headers: list[tuple[str, str]]
    request_id: str
    # Incoming headers not to pass on (key-auth's hide_credentials), lower case.
    drop_headers: frozenset[str] = frozenset()
    # What consistent-hashing hashes (UpstreamBalancer.hash_key); None: nothing.
    hash_key: str | None = None


class Proxy:
    def __init__(self, config: KongConfig, *, cooldown_seconds: float, tls: ReloadingSSLContext | None = None) -> None:
        self.cooldown_seconds = cooldown_seconds
        self.config = config
        self.balancers = self._balancers(config)
        self.client: UpstreamClient | None = None
        self.health_checks = HealthChecks()
        # Mutual TLS to upstreams (the gateway's certificate; renewed ones picked up by the watcher).
        self.tls = tls
        self._tls_watch: asyncio.Task[None] | None = None

    def _balancers(self, config: KongConfig) -> dict[str, UpstreamBalancer]:
        balancers = {u.name: UpstreamBalancer(u, cooldown_seconds=self.cooldown_seconds) for u in config.upstreams}
        # A service whose host is not an upstream goes straight to host:port (as in Kong).
        for service in config.services:
            if service.host not in balancers:
                implicit = Upstream(name=f"{service.name}.direct",
                                    targets=[{"target": f"{service.host}:{service.port}"}])
                balancers[implicit.name] = UpstreamBalancer(implicit, cooldown_seconds=self.cooldown_seconds)
        return balancers

    def _start_checks(self) -> None:
        assert self.client is not None
        self.health_checks.start([(self.balancers[u.name], u.healthchecks.active) for u in self.config.upstreams],
                                 self.client)

    async def reconfigure(self, config: KongConfig) -> None:
        """New balancers (and active checks) for a reloaded configuration; the client and its
        connections stay."""
        await self.health_checks.stop()
        self.config = config
        self.balancers = self._balancers(config)
        if self.client is not None:
            self._start_checks()

    async def start(self) -> None:
        # Requests are built by hand and sent as they are (gateway/upstream_client.py).
        self.client = UpstreamClient(ssl_context=self.tls.context if self.tls else None, max_per_target=1000,
                                     keepalive_expiry=2.0)
        self._start_checks()
        if self.tls is not None:
            self._tls_watch = asyncio.get_running_loop().create_task(self.tls.watch(), name="upstream-tls-watch")

    async def close(self) -> None:
        await self.health_checks.stop()
        if self._tls_watch is not None:
            self._tls_watch.cancel()
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    def balancer_for(self, service: Service) -> UpstreamBalancer:
        balancer = self.balancers.get(service.host) or self.balancers.get(f"{service.name}.direct")
        if balancer is None:  # the service went away in a reload while this request was routed
            raise ProblemError(502, f"the {service.name} service is no longer configured")
        return balancer

    def _build(self, request: Request, match: RouteMatch, target: TargetState, balancer: UpstreamBalancer,
               fwd: ForwardedRequest, content: AsyncIterator[bytes] | None) -> UpstreamRequest:
        service, route = match.entry.service, match.entry.route
        scope = request.scope
        # Forward the path as the client encoded it; fall back to re-encoding when the
        # encoded form does not start with the matched prefix (e.g. "%2F" in the prefix).
        encoded = (scope.get("raw_path") or b"").decode("latin-1") or quote(request.url.path, safe=_PATH_SAFE)
        raw = encoded
        if not prefix_matches(match.prefix, raw):
            raw = quote(request.url.path, safe=_PATH_SAFE)
        path = match.upstream_path(raw).encode("latin-1")
        query: bytes = scope.get("query_string", b"")

        incoming = request.headers.raw
        headers = filter_headers(incoming, GATEWAY_OWNED | {"x-forwarded-for"} | fwd.drop_headers)
        client_ip = request.client.host if request.client else ""
        previous = ", ".join(v.decode("latin-1") for k, v in incoming if k.lower() == b"x-forwarded-for")
        host_in = request.headers.get("host", "")
        if route.preserve_host and host_in:
            host_out = host_in
        else:
            host_out = balancer.host_header or f"{target.host}:{target.port}"
        forwarded_host, forwarded_port = split_host(host_in)
        default_port = 443 if request.url.scheme == "https" else 80
        added = [
            ("Host", host_out),
            ("X-Forwarded-For", f"{previous}, {client_ip}" if previous else client_ip),
            ("X-Forwarded-Proto", request.url.scheme),
            ("X-Forwarded-Host", forwarded_host),
            ("X-Forwarded-Port", forwarded_port or str(request.url.port or default_port)),
            # As the client sent it (percent-encoded): a header value must be ASCII, and a path with
            # Korean in it (a tag name) must not fail here.
            ("X-Forwarded-Path", encoded),
            ("X-Real-IP", client_ip),
            (REQUEST_ID_HEADER, fwd.request_id),
            *fwd.extra_headers,
        ]
        if route.strip_path and match.prefix != "/":
            added.append(("X-Forwarded-Prefix", match.prefix))
        headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in added if v]
        timeouts = Timeouts(connect=service.connect_timeout / 1000, read=service.read_timeout / 1000,
                            write=service.write_timeout / 1000, pool=service.connect_timeout / 1000)
        return UpstreamRequest(request.method, service.protocol, target.host, target.port,
                               path + (b"?" + query if query else b""), headers, content, timeouts)

    async def forward(self, request: Request, match: RouteMatch, fwd: ForwardedRequest) -> StarletteResponse:
        """Sends the request to a target of the route's service and streams the answer back.

        Raises ProblemError: 502 when no target could be reached, 504 on an upstream
        timeout, 413 when a streamed body passes the size limit.
        """
        assert self.client is not None, "Proxy.start() was not awaited"
        service = match.entry.service
        balancer = self.balancer_for(service)
        guard = _ReplayGuard(fwd.body)
        attempts, max_attempts = 0, service.retries + 1
        failure = "the upstream has no targets"
        for target in balancer.candidates(fwd.hash_key):
            if attempts >= max_attempts:
                break
            if attempts:
                RETRIES.labels(service.name).inc()
            attempts += 1
            up = self._build(request, match, target, balancer, fwd, guard.content())
            started = time.perf_counter()
            where = {"upstream_service": service.name, "target": target.address}
            target.in_flight += 1  # least-connections counts requests until their response headers
            try:
                response = await self.client.send(up.method, up.scheme, up.host, up.port, up.target, up.headers,
                                                  up.content, up.timeouts)
            except PayloadTooLarge as exc:
                raise too_large(exc.limit) from None
            except ClientDisconnect:
                raise
            except PoolTimeout:
                raise ProblemError(503, "the gateway has too many requests in flight to this service") from None
            except ConnectTimeout:
                balancer.report_failure(target, "timeout")
                failure = f"connecting to {target.address} timed out"
                log.warning("upstream connect timeout", extra=where)
                continue  # nothing was sent: always safe to try the next target
            except ConnectError as exc:
                balancer.report_failure(target, "tcp")
                failure = f"cannot connect to {target.address}"
                log.warning("upstream connect failed", extra={**where, "error": str(exc)})
                continue
            except (ReadTimeout, WriteTimeout):
                balancer.report_failure(target, "timeout")
                log.warning("upstream timeout", extra=where)
                raise ProblemError(504, f"the {service.name} service did not answer in time") from None
            except TransportError as exc:
                balancer.report_failure(target, "tcp")
                failure = f"{target.address} failed: {exc.__class__.__name__}"
                log.warning("upstream transport error", extra={**where, "error": repr(exc)})
                if request.method in IDEMPOTENT and not guard.started:
                    continue
                raise ProblemError(502, f"the {service.name} service failed while handling the request") from None
            finally:
                target.in_flight -= 1
            UPSTREAM_LATENCY.labels(service.name, target.address).observe(time.perf_counter() - started)
            balancer.report_status(target, response.status_code)
            length = response.content_length()
            if length is not None and length <= SMALL_BODY_BYTES and request.method != "HEAD":
                return await self._whole(response, service.name, target.address)
            return self._stream_back(response, service.name, target.address)
        raise ProblemError(502, f"the {service.name} service is unavailable ({failure})",
                           extra={"service": service.name})

    @staticmethod
    async def _whole(response: Response, service: str, target: str) -> StarletteResponse:
        """A small answer of declared length, read at once and sent as one message."""
        try:
            body = await response.aread()
        except TransportError as exc:
            log.warning("upstream response broke off", extra={"upstream_service": service, "target": target,
                                                              "error": repr(exc)})
            raise ProblemError(502, f"the {service} service's answer broke off") from None
        out = StarletteResponse(body, status_code=response.status_code)
        out.raw_headers = filter_headers(response.raw_headers, RESPONSE_OWNED)
        return out

    @staticmethod
    def _stream_back(response: Response, service: str, target: str) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            except TransportError as exc:
                # Headers are gone already; all we can do is cut the connection so the
                # client sees a truncated response rather than a complete-looking one.
                log.warning("upstream response broke off", extra={"upstream_service": service, "target": target,
                                                                  "error": repr(exc)})
                raise
            finally:
                await response.aclose()

        out = StreamingResponse(body(), status_code=response.status_code,
                                background=BackgroundTask(response.aclose))
        out.raw_headers = filter_headers(response.raw_headers, RESPONSE_OWNED)
        return out
