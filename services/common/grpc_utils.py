"""gRPC plumbing shared by servers and clients: request ids, metrics, health, deadlines."""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .context import GRPC_REQUEST_ID_KEY, new_request_id, request_id_var
from .metrics import GRPC_LATENCY, GRPC_REQUESTS


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


def create_server(service: str) -> grpc.aio.Server:
    return grpc.aio.server(
        interceptors=[ContextInterceptor(service)],
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


def client_channel(target: str) -> grpc.aio.Channel:
    """An insecure channel (loopback / private network) with keepalive and bigger messages.

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
    return grpc.aio.insecure_channel(target, options=options)
