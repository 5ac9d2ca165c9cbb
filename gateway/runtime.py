"""The live gateway: resources that outlive a configuration (database pool, upstream
client) and the current `Runtime` (config, router, plugin pipeline), which a reload
replaces whole.

A reload (SIGHUP) loads and compiles the file again; when anything about it is wrong the
old configuration stays in force and the error is logged. Requests in flight finish with
the runtime they started with; its plugins are closed after the shutdown grace period.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from services.common.db import Database

from .config import KongConfig, load_config
from .metrics import CONFIG_RELOADS
from .pipeline import Pipeline
from .plugins.base import Dependencies
from .proxy import Proxy
from .router import Router
from .settings import GatewaySettings

log = logging.getLogger("gateway")


@dataclass(frozen=True)
class Runtime:
    config: KongConfig
    router: Router
    pipeline: Pipeline


class Gateway:
    def __init__(self, settings: GatewaySettings, config: KongConfig) -> None:
        self.settings = settings
        self.db = Database(settings.dsn(), min_size=settings.db_pool_min, max_size=settings.db_pool_max)
        self.proxy = Proxy(config, cooldown_seconds=settings.gateway_unhealthy_cooldown_seconds,
                           tls=settings.upstream_ssl())
        self.runtime = self.compile(config)
        self._retiring: set[asyncio.Task[None]] = set()

    def compile(self, config: KongConfig) -> Runtime:
        """Router and pipeline for `config`; raises ConfigError (or ValueError) when unusable."""
        router = Router(config)
        deps = Dependencies(settings=self.settings, config=config, db=self.db,
                            extra={"balancers": lambda: self.proxy.balancers})
        return Runtime(config=config, router=router, pipeline=Pipeline(deps, router))

    def current(self) -> Runtime:
        return self.runtime

    async def start(self) -> None:
        await self.db.open()
        await self.proxy.start()
        await self.runtime.pipeline.start()

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        await self.runtime.pipeline.close()
        await self.proxy.close()
        await self.db.close()

    async def reload(self, path: Path | None = None) -> bool:
        """Loads the configuration file again; False (old configuration kept) when it is invalid."""
        source = path or self.settings.gateway_config
        try:
            config = load_config(source)
            runtime = self.compile(config)
            await runtime.pipeline.start()
        except Exception as exc:  # noqa: BLE001 - whatever is wrong, the old configuration stays
            CONFIG_RELOADS.labels("refused").inc()
            log.error("configuration reload refused, the old configuration stays in force: %s", exc,
                      extra={"config": str(source)})
            return False
        old, self.runtime = self.runtime, runtime
        await self.proxy.reconfigure(config)
        task = asyncio.create_task(self._retire(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        CONFIG_RELOADS.labels("applied").inc()
        log.info("configuration reloaded", extra={"config": str(source), "routes": len(runtime.router.entries)})
        return True

    async def _retire(self, old: Runtime) -> None:
        await asyncio.sleep(self.settings.shutdown_grace_seconds)
        await old.pipeline.close()
