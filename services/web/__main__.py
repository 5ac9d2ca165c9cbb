"""`python -m services.web`: one web UI replica."""
from __future__ import annotations

import asyncio

from services.common.logging import configure_logging
from services.common.runner import serve

from .app import build_app
from .settings import WebSettings


async def main() -> None:
    settings = WebSettings()
    configure_logging(settings.service_name, settings.log_level)
    # With DOCTAG_HTTP_TLS (`make up`): https with the platform's `web` certificate, client
    # certificates required and their role checked (HTTP_ACCESS), so only the gateway reaches the
    # pages (and the X-Real-IP it sets).
    await serve(build_app(settings), settings.http_host, settings.http_port, http_ssl=settings.http_ssl(),
                role=settings.role)


if __name__ == "__main__":
    asyncio.run(main())
