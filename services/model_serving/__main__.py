"""`python -m services.model_serving`: gRPC ModelServing + HTTP API in one asyncio loop.

Both servers start at once and answer "not ready" (gRPC health NOT_SERVING, /readyz 503)
while the model is verified and loaded in the background; then they switch to serving.

With the registry on (DOCTAG_MODEL_REGISTRY=true) and its database unreachable at start,
model-serving serves DOCTAG_MODEL_DIR as the default model and connects to the registry
in the background (registry.RegistryConnection); once connected it switches to the
registry's `production` at once. Meanwhile the two health signals differ on purpose:
gRPC health says whether predictions can be answered (SERVING once a default model is
loaded: callers such as the tagging worker keep working), while /readyz also requires
the registry (not ready, with the reason, until it is connected and every registered
version's store copy is usable), so operators see the degradation. The registry API
routes exist from the start and answer 503 until the registry is connected.
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
from .registry import RegistryConnection, RegistrySettings
from .registry_api import build_registry_router
from .runner import ModelRunner
from .settings import ModelServingSettings

log = logging.getLogger("services.model_serving")


async def main(settings: ModelServingSettings | None = None) -> None:
    settings = settings or ModelServingSettings()
    configure_logging(settings.service_name, settings.log_level)
    registry_settings = RegistrySettings()
    connection: RegistryConnection | None = None
    if registry_settings.model_registry:
        connection = RegistryConnection(settings.model_dir, registry_settings)
        await connection.start()   # one attempt now, then in the background until connected
        runner = ModelRunner(settings, resolver=connection.resolve, inference_log=connection.inference_log)
        connection.on_connected = runner.refresh_soon
        app = build_app(settings, runner, readiness={"registry": connection.ready_check})
        verifier = TokenVerifier(settings.public_key_path, settings.jwt_issuer, settings.jwt_audience)
        app.include_router(build_registry_router(connection.current, verifier, registry_settings))
    else:
        runner = ModelRunner(settings)
        app = build_app(settings, runner)

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
        if connection is not None:
            await connection.close()
        log.info("model-serving stopped")


if __name__ == "__main__":
    asyncio.run(main())
