"""gRPC plumbing shared by servers and clients: mutual TLS, caller authorisation, request ids,
metrics, health, deadlines."""
from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .access import AccessInterceptor, UserTokenSettings
from .context import GRPC_REQUEST_ID_KEY, new_request_id, request_id_var
from .metrics import GRPC_LATENCY, GRPC_REQUESTS
from .settings import CommonSettings
from .tls import ReloadingChannel, ServerCredentials, TlsFiles

log = logging.getLogger(__name__)


class InsecureNotLoopback(Exception):
    """DOCTAG_GRPC_TLS=false is refused for anything but a loopback address."""


@dataclass(frozen=True)
class GrpcSecurity:
    """How one process takes part in gRPC: its role, its certificate files (None: no TLS, loopback
    only, roles not checked) and how it verifies end users' tokens."""

    role: str
    files: TlsFiles | None
    tokens: UserTokenSettings | None

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> GrpcSecurity:
        ca, cert, key = settings.tls_paths()
        return cls(role=settings.role, files=TlsFiles(ca, cert, key) if settings.grpc_tls else None,
                   tokens=UserTokenSettings(settings.public_key_path, settings.jwt_issuer, settings.jwt_audience))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(server: grpc.aio.Server, address: str, security: GrpcSecurity | None) -> int:
    """Listens on `address` with mutual TLS (or, insecure mode, plain on loopback only)."""
    if security is not None and security.files is not None:
        return int(server.add_secure_port(address, ServerCredentials(security.files).credentials()))
    host = address.rsplit(":", 1)[0]
    if not _is_loopback(host):
        raise InsecureNotLoopback(f"gRPC without TLS only on loopback, not {address} (set DOCTAG_GRPC_TLS=true)")
    log.warning("gRPC without TLS: callers are not authenticated (development and benchmarks only)",
                extra={"address": address})
    return int(server.add_insecure_port(address))


class ContextInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no type information
    """Puts the caller's request id into the logging context and counts every call."""

    def __init__(self, service: str) -> None:
        self.service = service

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        rid = metadata.get(GRPC_REQUEST_ID_KEY) or new_request_id()
        method = handler_call_details.method.rsplit("/", 1)[-1]
        service = self.service

        def wrap_unary(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
                request_id_var.set(rid)
                start = time.perf_counter()
                code = "OK"
                try:
                    return await fn(request, context)
                except Exception:
                    code = "UNKNOWN"  # replaced below by the status an abort() set
                    raise
                finally:
                    if context.code() not in (None, grpc.StatusCode.OK):
                        code = context.code().name
                    GRPC_REQUESTS.labels(service, method, code).inc()
                    GRPC_LATENCY.labels(service, method).observe(time.perf_counter() - start)
            return wrapper

        def wrap_stream(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
                request_id_var.set(rid)
                start = time.perf_counter()
                try:
                    async for item in fn(request, context):
                        yield item
                finally:
                    code = context.code().name if context.code() else "OK"
                    GRPC_REQUESTS.labels(service, method, code).inc()
                    GRPC_LATENCY.labels(service, method).observe(time.perf_counter() - start)
            return wrapper

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap_unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap_stream(handler.unary_stream), handler.request_deserializer, handler.response_serializer)
        return handler


def create_server(service: str, security: GrpcSecurity | None) -> grpc.aio.Server:
    """A server whose every call passes the caller authorisation of services/common/access.py
    (`security=None`: none, for test doubles bound to loopback without TLS)."""
    interceptors: list[grpc.aio.ServerInterceptor] = [ContextInterceptor(service)]
    if security is not None:
        interceptors.append(AccessInterceptor(service, security.tokens, enforce_roles=security.files is not None))
    return grpc.aio.server(
        interceptors=interceptors,
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024),
                 ("grpc.max_send_message_length", 64 * 1024 * 1024)],
    )


def add_health(server: grpc.aio.Server, service_names: list[str]) -> health.aio.HealthServicer:
    """Registers grpc.health.v1.Health. Until `set_serving(..., service_names, True)` is called the
    named services are unknown to it (clients see NOT_FOUND / not serving)."""
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


async def set_serving(servicer: health.aio.HealthServicer, service_names: list[str], serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *service_names]:
        await servicer.set(name, status)


def client_channel(target: str, security: GrpcSecurity | None, server_role: str) -> ReloadingChannel:
    """A long-lived channel to a service of `server_role` (mutual TLS with this process's certificate,
    rebuilt when it is renewed; plain when `security` is None or has no files), with keepalive and
    bigger messages.

    `target` may list several addresses separated by commas; calls are balanced round-robin.
    """
    addresses = [t.strip() for t in target.split(",") if t.strip()]
    options: list[tuple[str, str | int]] = [
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.enable_retries", 1),
    ]
    if len(addresses) > 1:
        target = "ipv4:" + ",".join(addresses)
        options.append(("grpc.lb_policy_name", "round_robin"))
    return ReloadingChannel(target, security.files if security else None, server_role, options)
