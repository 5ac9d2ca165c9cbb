"""`python -m services.model_serving`: gRPC ModelServing + HTTP API in one asyncio loop.

Both servers start at once and answer "not ready" (gRPC health NOT_SERVING, /readyz 503)
while the model is verified and loaded in the background; then they switch to serving.
"""
from __future__ import annotations

import asyncio
import logging

from services.common.auth import TokenVerifier
from services.common.grpc_utils import add_health, create_server, set_serving
from services.common.logging import configure_logging
from services.common.pb import model_serving_pb2_grpc as pb_grpc
from services.common.runner import serve

from .grpc_api import SERVICE_NAME, ModelServingServicer
from .http_api import build_app
from .registry import build_registry_services
from .registry_api import build_registry_router
from .runner import ModelRunner
from .settings import ModelServingSettings

log = logging.getLogger("services.model_serving")


async def main(settings: ModelServingSettings | None = None) -> None:
    settings = settings or ModelServingSettings()
    configure_logging(settings.service_name, settings.log_level)
    # Registry + resolver + inference log when the database is reachable (None otherwise).
    registry_services = await build_registry_services(settings)
    registry, resolver, inference_log = registry_services or (None, None, None)
    runner = ModelRunner(settings, resolver=resolver, inference_log=inference_log)
    app = build_app(settings, runner)
    if registry is not None:
        app.include_router(build_registry_router(
            registry, TokenVerifier(settings.public_key_path, settings.jwt_issuer, settings.jwt_audience)))

    grpc_server = create_server(settings.service_name)
    pb_grpc.add_ModelServingServicer_to_server(ModelServingServicer(runner), grpc_server)
    health = add_health(grpc_server, [SERVICE_NAME])
    await set_serving(health, [SERVICE_NAME], False)

    async def model_ready() -> None:
        await set_serving(health, [SERVICE_NAME], True)
        info = runner.info
        log.info("model serving", extra={"model": info.name if info else None,
                                         "version": info.version if info else None,
                                         "http": f"{settings.http_host}:{settings.http_port}",
                                         "grpc": f"{settings.grpc_host}:{settings.grpc_port}"})

    # Loads the default model in the background (logging "model could not be loaded" on failure),
    # then re-resolves it every DOCTAG_MODEL_REFRESH_S seconds and swaps in a new version.
    runner.on_ready = model_ready
    load_task: asyncio.Task[None] | None = None

    async def start_loading() -> None:
        nonlocal load_task
        load_task = asyncio.create_task(runner.start(), name="load-model")

    try:
        await serve(app, settings.http_host, settings.http_port, grpc_server=grpc_server,
                    grpc_address=f"{settings.grpc_host}:{settings.grpc_port}",
                    on_grpc_started=start_loading, grace_seconds=settings.grpc_grace_s)
    finally:
        if load_task is not None and not load_task.done():
            load_task.cancel()
        await runner.aclose()
        if inference_log is not None:
            await inference_log.close()
        if registry is not None:
            await registry.close()
        log.info("model-serving stopped")


if __name__ == "__main__":
    asyncio.run(main())
