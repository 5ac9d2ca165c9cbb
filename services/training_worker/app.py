"""Process entry: the training worker plus a small HTTP server (/healthz, /readyz, /metrics)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import uvicorn

from services.common.http import create_app
from services.common.logging import configure_logging
from services.common.runner import QuietSignalsServer, use_tls

from .settings import TrainingWorkerSettings
from .worker import TrainingWorker

log = logging.getLogger(__name__)


async def serve(settings: TrainingWorkerSettings, stop_event: asyncio.Event | None = None) -> None:
    """Runs until SIGTERM/SIGINT (or `stop_event`)."""
    stop_event = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop_event.set)
    worker = TrainingWorker(settings)
    app = create_app(settings.service_name, title="Training worker", readiness={"worker": worker.check_ready},
                     max_body_bytes=settings.max_request_bytes, api_docs=settings.api_docs)
    config = uvicorn.Config(app, host=settings.http_host, port=settings.http_port, log_config=None, lifespan="on")
    watcher = use_tls(config, settings.http_ssl(), settings.role)
    server = QuietSignalsServer(config)
    http_task = asyncio.create_task(server.serve())
    try:
        await worker.start()
        await stop_event.wait()
    finally:
        await worker.stop()
        server.should_exit = True
        await http_task
        if watcher is not None:
            watcher.cancel()
        log.info("training worker stopped")


def main() -> None:
    settings = TrainingWorkerSettings()
    configure_logging(settings.service_name, settings.log_level)
    asyncio.run(serve(settings))
