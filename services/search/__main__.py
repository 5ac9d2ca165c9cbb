"""`python -m services.search`: HTTP (uvicorn) and gRPC in one asyncio loop."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn

from services.common.db import Database
from services.common.grpc_utils import add_health, create_server, set_serving
from services.common.logging import configure_logging

from .api import build_app
from .grpc_service import SERVICE_NAME, add_to_server
from .settings import SearchSettings

log = logging.getLogger("services.search")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: SIGTERM/SIGINT are handled by `main`,
    which stops gRPC gracefully too (uvicorn would re-raise the signal and end the process)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def main(settings: SearchSettings | None = None) -> None:
    settings = settings or SearchSettings()
    configure_logging(settings.service_name, settings.log_level)
    db = Database(settings.dsn(), min_size=settings.db_pool_min, max_size=settings.db_pool_max)
    app = build_app(settings, db, manage_db=False)

    grpc_server = create_server(settings.service_name)
    add_to_server(grpc_server, db)
    health = add_health(grpc_server, [SERVICE_NAME])
    grpc_server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_port}")

    http_server = _Server(uvicorn.Config(app, host=settings.http_host, port=settings.http_port,
                                         log_config=None, lifespan="on"))

    loop = asyncio.get_running_loop()
    grpc_stopping: asyncio.Task[None] | None = None

    async def stop_grpc() -> None:
        await set_serving(health, [SERVICE_NAME], False)
        await grpc_server.stop(settings.shutdown_grace_s)

    def request_stop() -> None:
        nonlocal grpc_stopping
        log.info("shutdown requested")
        http_server.should_exit = True
        if grpc_stopping is None:
            grpc_stopping = loop.create_task(stop_grpc())

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)

    await db.open()
    await grpc_server.start()
    await set_serving(health, [SERVICE_NAME], True)
    log.info("search serving", extra={"http": f"{settings.http_host}:{settings.http_port}",
                                      "grpc": f"{settings.grpc_host}:{settings.grpc_port}"})
    try:
        await http_server.serve()
    finally:
        # In-flight gRPC calls finish (within the grace period) before the pool closes.
        await (grpc_stopping or stop_grpc())
        await db.close()
        log.info("search stopped")


if __name__ == "__main__":
    asyncio.run(main())
