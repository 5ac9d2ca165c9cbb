"""`python -m gateway`: load kong.yml, then serve the proxy port and the status port
(Kong's `status_listen`) from one event loop.

SIGTERM/SIGINT: both listeners stop accepting, in-flight requests get up to
DOCTAG_SHUTDOWN_GRACE_SECONDS, the lifespan shutdown runs, exit code 0.
SIGHUP: the configuration file is loaded again; an invalid one is refused (logged) and the
running configuration stays; connections are never dropped.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Generator
from typing import Literal

import uvicorn
from fastapi import FastAPI

from services.common.logging import configure_logging
from services.common.runner import use_tls
from services.common.tls import ReloadingSSLContext, TlsFiles

from .app import build_apps
from .bad_request import ProblemHttpToolsProtocol
from .config import ConfigError, load_config
from .runtime import Gateway
from .settings import GatewaySettings

log = logging.getLogger("gateway")


class _Server(uvicorn.Server):
    """Signals are handled once for both listeners (see `serve`), not by each server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _config(app: FastAPI, host: str, port: int, settings: GatewaySettings,
            lifespan: Literal["on", "off"]) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, log_config=None, lifespan=lifespan,
        # httptools, as uvicorn would pick, but an unparseable request gets problem+json
        http=ProblemHttpToolsProtocol,
        # The gateway is the front door: X-Forwarded-* from clients are not trusted.
        proxy_headers=False, server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) or None,
    )


async def serve(gateway: Gateway, proxy: _Server, status: _Server,
                status_ssl: ReloadingSSLContext | None = None) -> None:
    loop = asyncio.get_running_loop()
    # With TLS the status port takes only platform certificates (HTTP_ACCESS["gateway"]: the
    # operational routes, nothing else); renewed certificates are picked up by the watcher.
    watcher = use_tls(status.config, status_ssl, "gateway")
    reloads: set[asyncio.Task[bool]] = set()

    def stop() -> None:
        proxy.should_exit = status.should_exit = True

    def reload() -> None:
        task = asyncio.create_task(gateway.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        await asyncio.gather(proxy.serve(), status.serve())
    finally:
        if watcher is not None:
            watcher.cancel()


def main() -> int:
    settings = GatewaySettings()
    configure_logging("gateway", settings.log_level)
    try:
        apps = build_apps(settings, load_config(settings.gateway_config))
    except ConfigError as exc:
        log.error("cannot start: %s", exc)
        print(exc, file=sys.stderr)
        return 2
    proxy = _Server(_config(apps.proxy, settings.http_host, settings.http_port, settings, "on"))
    status = _Server(_config(apps.status, settings.gateway_status_host or settings.http_host,
                             settings.gateway_status_port, settings, "off"))
    status_ssl = (ReloadingSSLContext(TlsFiles(*settings.tls_paths()), server=True)
                  if settings.gateway_status_tls else None)
    log.info("listening", extra={"host": settings.http_host, "port": settings.http_port,
                                 "status_port": settings.gateway_status_port, "status_tls": status_ssl is not None})
    # uvicorn's own loop choice (uvloop when installed), as `uvicorn.run` would make.
    with asyncio.Runner(loop_factory=proxy.config.get_loop_factory()) as runner:
        runner.run(serve(apps.gateway, proxy, status, status_ssl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
