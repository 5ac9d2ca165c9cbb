"""`python -m services.search`: one search replica (HTTP API + gRPC Search) in one asyncio loop."""
from __future__ import annotations

import asyncio

from services.common.db import Database
from services.common.grpc_utils import GrpcSecurity, add_health, create_server, set_serving
from services.common.logging import configure_logging
from services.common.runner import serve

from .api import build_app, make_cache, make_semantic
from .grpc_service import SERVICE_NAME, add_to_server
from .morph import Analyser
from .settings import SearchSettings


async def main(settings: SearchSettings | None = None) -> None:
    settings = settings or SearchSettings()
    configure_logging(settings.service_name, settings.log_level)
    db = Database(settings.dsn(), min_size=settings.db_pool_min, max_size=settings.db_pool_max)
    # The HTTP lifespan opens the pool before gRPC starts and closes it after gRPC has stopped;
    # it also starts loading the Korean analyser, and /readyz answers 503 until that is done.
    analyser = Analyser()
    cache = make_cache(settings)
    semantic = make_semantic(settings, cache) if settings.semantic_search else None
    app = build_app(settings, db, manage_db=True, analyser=analyser, semantic=semantic, cache=cache)
    security = GrpcSecurity.from_settings(settings)
    grpc_server = create_server(settings.service_name, security)
    add_to_server(grpc_server, db, semantic)
    health = add_health(grpc_server, [SERVICE_NAME])
    # grpcio's health servicer reports the server ("") SERVING from the start: not before warm-up.
    await set_serving(health, [SERVICE_NAME], False)

    async def mark_serving() -> None:
        await analyser.wait()  # raises when the analyser cannot load: the replica exits, loudly
        await set_serving(health, [SERVICE_NAME], True)

    try:
        await serve(app, settings.http_host, settings.http_port, grpc_server=grpc_server,
                    grpc_address=f"{settings.grpc_host}:{settings.grpc_port}", on_grpc_started=mark_serving,
                    grace_seconds=settings.shutdown_grace_s, grpc_security=security, http_ssl=settings.http_ssl(),
                    role=settings.role)
    finally:
        if semantic is not None:
            await semantic.close()


if __name__ == "__main__":
    asyncio.run(main())
