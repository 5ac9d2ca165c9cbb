"""Route matching and plugin scoping, compiled once from a KongConfig.

Matching: a route's path is a prefix on whole path segments (`/api/v1/quota` matches
`/api/v1/quota` and `/api/v1/quota/x`, not `/api/v1/quotas`); among the routes whose
path and method match, the longest prefix wins (declaration order breaks ties). A path
that only matches routes with other methods answers 405, no match at all 404.

Plugin scoping as in Kong: for each plugin name the most specific enabled
configuration applies (route, then service, then global).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .config import KongConfig, Route, Service


class NoRoute(Exception):
    pass


class MethodNotAllowed(Exception):
    def __init__(self, allowed: list[str]) -> None:
        super().__init__(f"allowed: {', '.join(allowed)}")
        self.allowed = allowed


@dataclass(frozen=True)
class RouteEntry:
    route: Route
    service: Service
    plugins: Mapping[str, Any] = field(default_factory=dict)
    # Where each plugin's configuration comes from: "global", "service:<name>" or "route:<name>"
    # (counters of rate-limiting are kept per configured plugin, as in Kong).
    scopes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RouteMatch:
    entry: RouteEntry
    prefix: str

    def upstream_path(self, path: str) -> str:
        """The path sent upstream: the service's path joined with the request path
        (minus the matched prefix when `strip_path`)."""
        base = (self.entry.service.path or "").rstrip("/")
        if self.entry.route.strip_path:
            rest = path[len(self.prefix):]
            if not rest:
                return base or "/"
            if not rest.startswith("/"):
                rest = "/" + rest
            return base + rest
        return base + path


def prefix_matches(prefix: str, path: str) -> bool:
    if path == prefix or prefix == "/":
        return True
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path.startswith(prefix + "/")


def _effective(config: KongConfig, service: str, route: str) -> dict[str, tuple[int, Any, str]]:
    ranked: dict[str, tuple[int, Any, str]] = {}
    for (scope_service, scope_route), plugin in config.all_plugins():
        if not plugin.enabled:
            continue
        if scope_route is not None:
            rank, scope = (2 if scope_route == route else -1), f"route:{scope_route}"
        elif scope_service is not None:
            rank, scope = (1 if scope_service == service else -1), f"service:{scope_service}"
        else:
            rank, scope = 0, "global"
        if rank >= 0 and rank > ranked.get(plugin.name, (-1, None, ""))[0]:
            ranked[plugin.name] = (rank, plugin.config, scope)
    return ranked


def effective_plugins(config: KongConfig, service: str, route: str) -> dict[str, Any]:
    """Plugin name -> typed config for requests on `route` of `service`."""
    return {name: cfg for name, (_, cfg, _) in _effective(config, service, route).items()}


def global_plugins(config: KongConfig) -> dict[str, Any]:
    return {p.name: p.config for scope, p in config.all_plugins() if scope == (None, None) and p.enabled}


class Router:
    def __init__(self, config: KongConfig) -> None:
        services = {s.name: s for s in config.services}
        self._table: list[tuple[str, int, RouteEntry]] = []
        for order, (service_name, route) in enumerate(config.all_routes()):
            if not services[service_name].enabled:
                continue  # Kong: the routes of a disabled service do not match
            effective = _effective(config, service_name, route.name)
            entry = RouteEntry(route=route, service=services[service_name],
                               plugins=MappingProxyType({n: cfg for n, (_, cfg, _) in effective.items()}),
                               scopes=MappingProxyType({n: scope for n, (_, _, scope) in effective.items()}))
            for prefix in route.paths:
                self._table.append((prefix, order, entry))
        # Longest prefix first; declaration order among equals.
        self._table.sort(key=lambda item: (-len(item[0]), item[1]))

    @property
    def entries(self) -> list[RouteEntry]:
        seen: dict[str, RouteEntry] = {}
        for _, _, entry in self._table:
            seen.setdefault(entry.route.name, entry)
        return list(seen.values())

    def match(self, method: str, path: str) -> RouteMatch:
        allowed: set[str] = set()
        for prefix, _, entry in self._table:
            if not prefix_matches(prefix, path):
                continue
            methods = entry.route.methods
            if methods is None or method.upper() in methods:
                return RouteMatch(entry=entry, prefix=prefix)
            allowed.update(methods)
        if allowed:
            raise MethodNotAllowed(sorted(allowed))
        raise NoRoute(path)
