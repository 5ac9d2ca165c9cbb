"""`python -m services.upload`: one upload replica (HTTP API + gRPC Documents + outbox relay)."""
from __future__ import annotations

import asyncio

from services.common.grpc_utils import add_health, create_server, set_serving
from services.common.logging import configure_logging
from services.common.pb import documents_pb2_grpc
from services.common.runner import serve

from .app import UploadComponents, build_http_app
from .grpc_api import DocumentsServicer
from .settings import UploadSettings


async def main() -> None:
    settings = UploadSettings()
    configure_logging(settings.service_name, settings.log_level)
    components = UploadComponents(settings)
    app = build_http_app(components)
    grpc_server = create_server(settings.service_name)
    documents_pb2_grpc.add_DocumentsServicer_to_server(DocumentsServicer(components.service), grpc_server)
    health = add_health(grpc_server, ["doctag.v1.Documents"])

    async def mark_serving() -> None:
        await set_serving(health, ["doctag.v1.Documents"], True)

    await serve(app, settings.http_host, settings.http_port, grpc_server=grpc_server,
                grpc_address=f"{settings.grpc_host}:{settings.grpc_port}", on_grpc_started=mark_serving)


if __name__ == "__main__":
    asyncio.run(main())
