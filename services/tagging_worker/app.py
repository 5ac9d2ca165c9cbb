"""Process entry: the job consumer plus a small HTTP server (/healthz, /readyz, /metrics)."""
from __future__ import annotations

import asyncio

from fastapi import FastAPI

from services.common.http import create_app
from services.common.logging import configure_logging
from services.common.runner import serve_worker

from .settings import WorkerSettings
from .worker import TaggingWorker


def build_http_app(worker: TaggingWorker) -> FastAPI:
    return create_app(worker.settings.service_name, title="Tagging worker",
                      readiness={"amqp": worker.check_amqp, "grpc": worker.check_grpc},
                      max_body_bytes=worker.settings.max_request_bytes, api_docs=worker.settings.api_docs)


async def serve(settings: WorkerSettings, stop_event: asyncio.Event | None = None) -> None:
    """Runs until SIGTERM/SIGINT (or `stop_event`), then shuts down gracefully."""
    worker = TaggingWorker(settings)
    await serve_worker(build_http_app(worker), settings, settings.http_port, worker, "tagging worker", stop_event)


def main() -> None:
    settings = WorkerSettings()
    configure_logging(settings.service_name, settings.log_level)
    asyncio.run(serve(settings))
