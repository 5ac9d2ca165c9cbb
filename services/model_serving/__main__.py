"""`python -m services.model_serving`: gRPC ModelServing + HTTP API in one asyncio loop.

Both servers start at once and answer "not ready" (gRPC health NOT_SERVING, /readyz 503)
while the model is verified and loaded in the background; then they switch to serving.
"""
from __future__ import annotations

import asyncio
import logging

from services.common.grpc_utils import add_health, create_server, set_serving
from services.common.logging import configure_logging
from services.common.pb import model_serving_pb2_grpc as pb_grpc
from services.common.runner import serve

from .grpc_api import SERVICE_NAME, ModelServingServicer
from .http_api import build_app
from .runner import ModelRunner
from .settings import ModelServingSettings

log = logging.getLogger("services.model_serving")


async def main(settings: ModelServingSettings | None = None) -> None:
    settings = settings or ModelServingSettings()
    configure_logging(settings.service_name, settings.log_level)
    runner = ModelRunner(settings)
    app = build_app(settings, runner)

    grpc_server = create_server(settings.service_name)
    pb_grpc.add_ModelServingServicer_to_server(ModelServingServicer(runner), grpc_server)
    health = add_health(grpc_server, [SERVICE_NAME])
    await set_serving(health, [SERVICE_NAME], False)

    async def load_model() -> None:
        try:
            await runner.load()
        except Exception:  # noqa: BLE001 - reported by /readyz and the log; the process stays up
            log.exception("model could not be loaded", extra={"model_dir": str(settings.model_dir)})
            return
        await set_serving(health, [SERVICE_NAME], True)
        info = runner.info
        log.info("model serving", extra={"model": info.name if info else None,
                                         "version": info.version if info else None,
                                         "http": f"{settings.http_host}:{settings.http_port}",
                                         "grpc": f"{settings.grpc_host}:{settings.grpc_port}"})

    load_task: asyncio.Task[None] | None = None

    async def start_loading() -> None:
        nonlocal load_task
        load_task = asyncio.create_task(load_model(), name="load-model")

    try:
        await serve(app, settings.http_host, settings.http_port, grpc_server=grpc_server,
                    grpc_address=f"{settings.grpc_host}:{settings.grpc_port}",
                    on_grpc_started=start_loading, grace_seconds=settings.grpc_grace_s)
    finally:
        if load_task is not None and not load_task.done():
            load_task.cancel()
        runner.close()
        log.info("model-serving stopped")


if __name__ == "__main__":
    asyncio.run(main())
