"""What every plugin shares: the base of its `config:` schema, the per-request context
the phases read and write, and the handler base class with Kong's phases.

A plugin is a folder `gateway/plugins/<name>/` with
- `schema.py`: `NAME` (the Kong plugin name) and `Config` (a `PluginConfig`);
- `handler.py`: `Handler`, a subclass of `PluginHandler[Config]` with a `PRIORITY`.

Phases, in the order Kong runs them (each optional):
- `rewrite(conf, ctx)`: global plugins only, before the route is known (Kong runs the
  rewrite phase for global plugins only); may change the raw request headers.
- `access(conf, ctx)`: after routing, highest `PRIORITY` first; raising `ProblemError`
  answers the client and stops the chain (Kong's `kong.response.exit`).
- `header_filter(conf, ctx, headers)`: on the response headers, for every plugin of the
  request, also when an earlier plugin or the upstream failed.
- `log(conf, ctx)`: after the response has been sent.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict

from services.common.auth import Principal

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import Scope

    from gateway.config import KongConfig
    from gateway.router import RouteMatch
    from gateway.settings import GatewaySettings
    from services.common.db import Database


class PluginConfig(BaseModel):
    """Unknown keys are errors: a typo in kong.yml must not silently disable a check."""

    model_config = ConfigDict(extra="forbid", frozen=True)


ConfigT = TypeVar("ConfigT", bound=PluginConfig)
RawHeaders = list[tuple[bytes, bytes]]


@dataclass
class RequestContext:
    """One request's state across the phases (Kong's `kong.ctx`)."""

    scope: Scope
    started: float = field(default_factory=time.perf_counter)
    request: Request | None = None
    match: RouteMatch | None = None
    # Set by an authentication plugin (jwt, key-auth).
    principal: Principal | None = None
    credential: str | None = None
    # Headers the plugins add to the upstream request and to the response.
    upstream_headers: list[tuple[str, str]] = field(default_factory=list)
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    # request-size-limiting's limit for the streamed body.
    body_limit: int | None = None
    status: int = 0
    # The scope of the plugin whose access phase is running ("global", "service:x", "route:y").
    plugin_scope: str = "global"
    upstream_latency_s: float | None = None
    response_bytes: int = 0
    request_bytes: int = 0
    shared: dict[str, Any] = field(default_factory=dict)
    # Set by a plugin that answers the request itself (Kong's kong.response.exit); the
    # remaining access phases are skipped and this is sent.
    exit_response: Response | None = None

    @property
    def groups(self) -> tuple[str, ...] | None:
        """The authenticated caller's groups (the platform roles), None when nobody is authenticated."""
        return self.principal.roles if self.principal is not None else None

    @property
    def client_ip(self) -> str:
        client = self.scope.get("client")
        return str(client[0]) if client else ""

    @property
    def route_name(self) -> str:
        return self.match.entry.route.name if self.match else "none"

    @property
    def service_name(self) -> str:
        return self.match.entry.service.name if self.match else "none"


@dataclass(frozen=True)
class Dependencies:
    """What handlers may use; built once per loaded configuration."""

    settings: GatewaySettings
    config: KongConfig
    db: Database
    extra: dict[str, Any] = field(default_factory=dict)


class PluginHandler(Generic[ConfigT]):
    """Base of every plugin handler: all phases do nothing unless overridden."""

    PRIORITY: ClassVar[int] = 0

    def __init__(self, deps: Dependencies) -> None:
        self.deps = deps

    async def start(self) -> None:
        """Called once when the configuration that uses this plugin goes live."""

    async def close(self) -> None:
        """Called when that configuration is replaced or the gateway stops."""

    def rewrite(self, conf: ConfigT, ctx: RequestContext) -> None:
        return None

    async def access(self, conf: ConfigT, ctx: RequestContext) -> None:
        return None

    def header_filter(self, conf: ConfigT, ctx: RequestContext, headers: RawHeaders) -> None:
        return None

    def log(self, conf: ConfigT, ctx: RequestContext) -> None:
        return None


def kong_default_only(default: Any, why: str = "not supported by this gateway") -> AfterValidator:
    """Validator for a Kong key this gateway accepts but does not implement: the value must be
    Kong's default (so a `deck dump` loads); anything else is refused, naming the key (pydantic
    puts the key's path in front of the message). Lists compare as sets."""

    def check(value: Any) -> Any:
        if default is None and value in ([], {}):
            return None
        same = (sorted(map(str, value)) == sorted(map(str, default))
                if isinstance(value, list) and isinstance(default, list) else value == default)
        if not same:
            raise ValueError(f"{why}; only Kong's default {json.dumps(default)} is accepted")
        return value

    return AfterValidator(check)
