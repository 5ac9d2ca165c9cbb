"""The plugin pipeline: whatever plugins the configuration enables, run by phase in
Kong's order (highest `PRIORITY` first).

`Pipeline` is compiled once per configuration: one handler instance per plugin in use,
the global plugins, and for every route its effective plugins (route over service over
global, as in Kong). `PhasesMiddleware` is the outermost ASGI layer of the proxy app:
it makes the request's `RequestContext`, runs the rewrite phase (global plugins, before
anything reads the headers), the header_filter phase on every response (errors
included) and the log phase once the response is sent. The access phase runs in the
proxy endpoint, once the route is known (gateway/dispatch.py).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .plugins import handler_classes
from .plugins.base import Dependencies, PluginConfig, PluginHandler, RawHeaders, RequestContext
from .router import Router, global_plugins

log = logging.getLogger("gateway.pipeline")
CTX_KEY = "gateway.ctx"
RUNTIME_KEY = "gateway.runtime"


@dataclass(frozen=True)
class Step:
    name: str
    handler: PluginHandler[Any]
    conf: PluginConfig
    scope: str = "global"


class Pipeline:
    def __init__(self, deps: Dependencies, router: Router) -> None:
        classes = handler_classes()
        used = sorted({p.name for _, p in deps.config.all_plugins() if p.enabled})
        self.handlers: dict[str, PluginHandler[Any]] = {name: classes[name](deps) for name in used}
        self.globals = self._steps(global_plugins(deps.config))
        self.by_route = {entry.route.name: self._steps(entry.plugins, entry.scopes) for entry in router.entries}

    def _steps(self, plugins: Mapping[str, Any], scopes: Mapping[str, str] | None = None) -> tuple[Step, ...]:
        steps = [Step(name, self.handlers[name], conf, (scopes or {}).get(name, "global"))
                 for name, conf in plugins.items()]
        steps.sort(key=lambda s: (-s.handler.PRIORITY, s.name))
        return tuple(steps)

    def names(self, route: str | None = None) -> list[str]:
        """The plugins that run for `route` (the global ones for None), in order."""
        return [s.name for s in (self.by_route[route] if route else self.globals)]

    async def start(self) -> None:
        for handler in self.handlers.values():
            await handler.start()

    async def close(self) -> None:
        for name, handler in self.handlers.items():
            try:
                await handler.close()
            except Exception:
                log.exception("closing plugin %s failed", name)

    def steps_for(self, ctx: RequestContext) -> tuple[Step, ...]:
        return self.by_route[ctx.match.entry.route.name] if ctx.match is not None else self.globals

    def rewrite(self, ctx: RequestContext) -> None:
        for step in self.globals:
            step.handler.rewrite(step.conf, ctx)

    async def access(self, ctx: RequestContext) -> None:
        steps = self.steps_for(ctx)
        ctx.shared["plugins"] = frozenset(step.name for step in steps)
        for step in steps:
            ctx.plugin_scope = step.scope
            await step.handler.access(step.conf, ctx)
            if ctx.exit_response is not None:
                return

    def header_filter(self, ctx: RequestContext, headers: RawHeaders) -> None:
        for step in self.steps_for(ctx):
            step.handler.header_filter(step.conf, ctx, headers)

    def log(self, ctx: RequestContext) -> None:
        for step in self.steps_for(ctx):
            try:
                step.handler.log(step.conf, ctx)
            except Exception:
                log.exception("log phase of plugin %s failed", step.name)


class HasPipeline(Protocol):
    @property
    def pipeline(self) -> Pipeline: ...


class PhasesMiddleware:
    """Runs the rewrite, header_filter and log phases around the proxy app; `current`
    returns the live runtime (it changes on a configuration reload; a request keeps the
    one it started with, found under `scope["state"]["gateway.runtime"]`)."""

    def __init__(self, app: ASGIApp, current: Callable[[], HasPipeline]) -> None:
        self.app = app
        self.current = current

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        runtime = self.current()
        pipeline = runtime.pipeline
        ctx = RequestContext(scope=scope)
        state = scope.setdefault("state", {})
        state[CTX_KEY] = ctx
        state[RUNTIME_KEY] = runtime
        pipeline.rewrite(ctx)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                ctx.status = message["status"]
                headers: RawHeaders = list(message.get("headers", []))
                headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in ctx.response_headers]
                pipeline.header_filter(ctx, headers)
                message = dict(message, headers=headers)
            elif message["type"] == "http.response.body":
                ctx.response_bytes += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            pipeline.log(ctx)


def context_of(scope: Scope) -> RequestContext:
    ctx: RequestContext = scope["state"][CTX_KEY]
    return ctx
