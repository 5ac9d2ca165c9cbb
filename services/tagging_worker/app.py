"""Process entry: the job consumer plus a small HTTP server (/healthz, /readyz, /metrics)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import uvicorn
from fastapi import FastAPI

from services.common.http import create_app
from services.common.logging import configure_logging
from services.common.runner import QuietSignalsServer, use_tls

from .settings import WorkerSettings
from .worker import TaggingWorker

log = logging.getLogger(__name__)


def build_http_app(worker: TaggingWorker) -> FastAPI:
    return create_app(worker.settings.service_name, title="Tagging worker",
                      readiness={"amqp": worker.check_amqp, "grpc": worker.check_grpc},
                      max_body_bytes=worker.settings.max_request_bytes, api_docs=worker.settings.api_docs)


async def serve(settings: WorkerSettings, stop_event: asyncio.Event | None = None) -> None:
    """Runs until SIGTERM/SIGINT (or `stop_event`), then shuts down gracefully."""
    stop_event = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread (tests)
            loop.add_signal_handler(sig, stop_event.set)

    worker = TaggingWorker(settings)
    config = uvicorn.Config(build_http_app(worker), host=settings.http_host, port=settings.http_port,
                            log_config=None, lifespan="on")
    watcher = use_tls(config, settings.http_ssl(), settings.role)
    server = QuietSignalsServer(config)
    http_task = asyncio.create_task(server.serve())
    try:
        await worker.start()
        log.info("tagging worker started", extra={"http_port": settings.http_port})
        await stop_event.wait()
        log.info("shutting down")
    finally:
        await worker.stop()
        server.should_exit = True
        await http_task
        if watcher is not None:
            watcher.cancel()
        log.info("tagging worker stopped")


def main() -> None:
    settings = WorkerSettings()
    configure_logging(settings.service_name, settings.log_level)
    asyncio.run(serve(settings))
