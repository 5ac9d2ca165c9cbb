"""`python -m gateway`: load kong.yml, then serve the gateway with uvicorn.

uvicorn handles SIGTERM/SIGINT: it stops accepting, lets in-flight requests finish
(up to DOCTAG_SHUTDOWN_GRACE_SECONDS) and runs the lifespan shutdown.
"""
from __future__ import annotations

import asyncio
import logging
import sys

import uvicorn

from services.common.logging import configure_logging

from .app import build_app
from .config import ConfigError, load_config
from .settings import GatewaySettings

log = logging.getLogger("gateway")


def main() -> int:
    settings = GatewaySettings()
    configure_logging("gateway", settings.log_level)
    try:
        config = load_config(settings.gateway_config)
        app = build_app(settings, config)
    except ConfigError as exc:
        log.error("cannot start: %s", exc)
        print(exc, file=sys.stderr)
        return 2
    server = uvicorn.Server(uvicorn.Config(
        app, host=settings.http_host, port=settings.http_port, log_config=None, lifespan="on",
        # The gateway is the front door: X-Forwarded-* from clients are not trusted.
        proxy_headers=False, server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) or None,
    ))
    log.info("listening", extra={"host": settings.http_host, "port": settings.http_port})
    asyncio.run(server.serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
