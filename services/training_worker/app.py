"""Process entry: the training worker plus a small HTTP server (/healthz, /readyz, /metrics)."""
from __future__ import annotations

import asyncio

from services.common.http import create_app
from services.common.logging import configure_logging
from services.common.runner import serve_worker

from .settings import TrainingWorkerSettings
from .worker import TrainingWorker


async def serve(settings: TrainingWorkerSettings, stop_event: asyncio.Event | None = None) -> None:
    """Runs until SIGTERM/SIGINT (or `stop_event`)."""
    worker = TrainingWorker(settings)
    app = create_app(settings.service_name, title="Training worker", readiness={"worker": worker.check_ready},
                     max_body_bytes=settings.max_request_bytes, api_docs=settings.api_docs)
    await serve_worker(app, settings, settings.http_port, worker, "training worker", stop_event)


def main() -> None:
    settings = TrainingWorkerSettings()
    configure_logging(settings.service_name, settings.log_level)
    asyncio.run(serve(settings))
