"""Runs a service's HTTP app (uvicorn) and optional gRPC server in one asyncio loop,
and stops both gracefully on SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

import grpc
import uvicorn
from fastapi import FastAPI

from .access import HTTP_ACCESS
from .grpc_utils import GrpcSecurity, bind
from .http_access import HttpAccessMiddleware, with_peer_role
from .settings import CommonSettings
from .tls import ReloadingSSLContext

log = logging.getLogger(__name__)


class QuietSignalsServer(uvicorn.Server):
    """uvicorn without its own signal capture: the process handles SIGTERM/SIGINT itself so that
    what runs beside HTTP (gRPC, a queue consumer) stops gracefully too (uvicorn 0.54 would
    re-raise the signal and end the process first)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def use_tls(config: uvicorn.Config, http_ssl: ReloadingSSLContext | None, role: str) -> asyncio.Task[None] | None:
    """Serves `config`'s app over mutual TLS with `http_ssl` (renewed certificates picked up by a
    watcher task, returned), and checks each request's client certificate role against
    `HTTP_ACCESS[role]` (services/common/http_access.py); nothing without TLS."""
    if http_ssl is None:
        return None
    if role not in HTTP_ACCESS:
        raise RuntimeError(f"no HTTP access rule for role {role!r} (services/common/access.py HTTP_ACCESS)")
    config.load()
    config.ssl = http_ssl.context
    config.http_protocol_class = with_peer_role(config.http_protocol_class)
    config.loaded_app = HttpAccessMiddleware(config.loaded_app, role)
    return asyncio.get_running_loop().create_task(http_ssl.watch(), name="tls-watch")


async def serve(app: FastAPI, host: str, port: int, *, grpc_server: grpc.aio.Server | None = None,
                grpc_address: str | None = None, on_grpc_started: Callable[[], Awaitable[None]] | None = None,
                grace_seconds: float = 10.0, grpc_security: GrpcSecurity | None = None,
                http_ssl: ReloadingSSLContext | None = None, role: str = "") -> None:
    """`role`: the service's certificate role, whose HTTP_ACCESS rule the HTTPS port enforces."""
    config = uvicorn.Config(app, host=host, port=port, log_config=None, lifespan="on", access_log=False,
                            timeout_graceful_shutdown=int(grace_seconds))
    server = QuietSignalsServer(config)
    watcher = use_tls(config, http_ssl, role)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    http_task = asyncio.create_task(server.serve(), name="http")
    if grpc_server is not None and grpc_address:
        # Wait until the HTTP lifespan has started the shared components before taking gRPC calls.
        while not server.started and not http_task.done():
            await asyncio.sleep(0.05)
        if http_task.done():
            await http_task
            return
        bind(grpc_server, grpc_address, grpc_security)
        await grpc_server.start()
        log.info("grpc listening", extra={"address": grpc_address})
        if on_grpc_started:
            await on_grpc_started()
    log.info("http listening", extra={"host": host, "port": port})

    stop_task = asyncio.create_task(stop.wait(), name="stop")
    await asyncio.wait({http_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    log.info("shutting down")
    if grpc_server is not None:
        await grpc_server.stop(grace_seconds)
    server.should_exit = True
    await http_task
    if watcher is not None:
        watcher.cancel()


class BackgroundWorker(Protocol):
    """What `serve_worker` runs beside the HTTP port: a queue consumer with start and stop."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def serve_worker(app: FastAPI, settings: CommonSettings, http_port: int, worker: BackgroundWorker,
                       name: str, stop_event: asyncio.Event | None = None) -> None:
    """A worker process: `worker` consumes while `app` (/healthz, /readyz, /metrics) serves on the
    settings' host and `http_port` (mutual TLS when configured); runs until SIGTERM/SIGINT (or `stop_event`),
    then stops the worker first and the HTTP port after it."""
    stop_event = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread (tests)
            loop.add_signal_handler(sig, stop_event.set)
    config = uvicorn.Config(app, host=settings.http_host, port=http_port, log_config=None, lifespan="on")
    watcher = use_tls(config, settings.http_ssl(), settings.role)
    server = QuietSignalsServer(config)
    http_task = asyncio.create_task(server.serve(), name="http")
    try:
        await worker.start()
        log.info("%s started", name, extra={"http_port": http_port})
        await stop_event.wait()
        log.info("shutting down")
    finally:
        await worker.stop()
        server.should_exit = True
        await http_task
        if watcher is not None:
            watcher.cancel()
        log.info("%s stopped", name)
