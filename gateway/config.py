"""The gateway's declarative configuration: a file in Kong's DB-less `kong.yml` format
(`_format_version: "3.0"`), parsed into typed, validated objects.

Only the subset of Kong's schema that this gateway implements is accepted; an unknown
key is an error (a typo must not silently weaken a check). `load_config` reads a file,
`with_targets` rewrites upstream targets (the process launcher uses it for other
ports) and `write_config` writes a file that loads back to the same configuration.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .plugins import GLOBAL_ONLY, PLUGIN_CONFIGS
from .plugins.base import kong_default_only

_NAME = r"^[A-Za-z0-9._~-]{1,128}$"
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}


class ConfigError(ValueError):
    """A kong.yml that cannot be used; the message names the file and the bad entry."""


class _Entity(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    tags: list[str] | None = None


class _Identified(_Entity):
    # decK writes ids with --with-id; they identify an entity in Kong's database, here only in the file.
    id: str | None = None


PluginProtocol = Literal["grpc", "grpcs", "http", "https", "ws", "wss", "tcp", "tls", "udp"]
RouteProtocol = Literal["http", "https"]


def _plugin_protocols() -> list[PluginProtocol]:
    return ["grpc", "grpcs", "http", "https"]


def _route_protocols() -> list[RouteProtocol]:
    return ["http", "https"]


class Plugin(_Identified):
    name: str
    instance_name: str | None = None
    enabled: bool = True
    # Typed by the plugin's own Config model (see gateway/plugins).
    config: Any = None
    # Requests reach this gateway over HTTP: a plugin must run for http and https.
    protocols: list[PluginProtocol] = Field(default_factory=_plugin_protocols)
    # Only on top-level plugins: the scope, by name.
    service: str | None = None
    route: str | None = None
    consumer: Annotated[Any, kong_default_only(None, "plugins scoped to a consumer are not supported")] = None
    ordering: Annotated[Any, kong_default_only(None, "dynamic plugin ordering is not supported")] = None

    @field_validator("protocols")
    @classmethod
    def _http(cls, protocols: list[str]) -> list[str]:
        if not {"http", "https"} <= set(protocols):
            raise ValueError("a plugin must apply to both http and https here (requests arrive over HTTP); "
                             "limiting it to other protocols is not supported")
        return protocols

    @field_validator("service", "route", mode="before")
    @classmethod
    def _ref(cls, value: Any) -> Any:
        return _reference(value)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in PLUGIN_CONFIGS:
            raise ValueError(f"plugin '{name}' is not implemented by this gateway "
                             f"(known: {', '.join(sorted(PLUGIN_CONFIGS))})")
        return name

    @field_validator("config", mode="before")
    @classmethod
    def _typed_config(cls, config: Any, info: ValidationInfo) -> Any:
        model = PLUGIN_CONFIGS.get(info.data.get("name", ""))
        if model is None or isinstance(config, model):
            return config
        return model.model_validate(config or {})

    @model_validator(mode="after")
    def _scope(self) -> Plugin:
        if self.service is not None and self.route is not None:
            raise ValueError(f"plugin '{self.name}': give either 'service' or 'route', not both")
        if self.config is None:
            self.config = PLUGIN_CONFIGS[self.name]()
        return self


class Route(_Identified):
    name: str = Field(pattern=_NAME)
    paths: list[str] = Field(min_length=1)
    methods: list[str] | None = None
    hosts: Annotated[list[str] | None, kong_default_only(None, "matching routes by host is not supported")] = None
    headers: Annotated[dict[str, list[str]] | None,
                       kong_default_only(None, "matching routes by header is not supported")] = None
    snis: Annotated[list[str] | None, kong_default_only(None, "matching routes by SNI is not supported")] = None
    sources: Annotated[list[Any] | None, kong_default_only(None, "stream routes are not supported")] = None
    destinations: Annotated[list[Any] | None, kong_default_only(None, "stream routes are not supported")] = None
    protocols: list[RouteProtocol] = Field(default_factory=_route_protocols, min_length=1)
    # Kong answers plain-HTTP requests on an https-only route with this; such routes are refused
    # here (protocols must include http), so the value never applies, as on such a route in Kong.
    https_redirect_status_code: Literal[426, 301, 302, 307, 308] = 426
    regex_priority: Annotated[int, kong_default_only(0, "regex paths are not supported, so neither is this")] = 0
    path_handling: Annotated[Literal["v0", "v1"],
                             kong_default_only("v0", "only path_handling v0 is implemented")] = "v0"
    strip_path: bool = True
    preserve_host: bool = False
    # Bodies are always streamed both ways (never buffered), whatever these say.
    request_buffering: bool = True
    response_buffering: bool = True
    # Only on top-level routes: the service, by name.
    service: str | None = None
    plugins: list[Plugin] = Field(default_factory=list)

    @field_validator("service", mode="before")
    @classmethod
    def _ref(cls, value: Any) -> Any:
        return _reference(value)

    @field_validator("protocols")
    @classmethod
    def _plain_http(cls, protocols: list[str]) -> list[str]:
        if "http" not in protocols:
            raise ValueError("a route must accept http: this gateway's listener is plain HTTP "
                             "(TLS ends in front of it), so an https-only route could never match")
        return protocols

    @field_validator("paths")
    @classmethod
    def _paths(cls, paths: list[str]) -> list[str]:
        for path in paths:
            if path.startswith("~"):
                raise ValueError(f"regex paths are not supported: {path!r}")
            if not path.startswith("/"):
                raise ValueError(f"a path must start with '/': {path!r}")
        return paths

    @field_validator("methods")
    @classmethod
    def _methods(cls, methods: list[str] | None) -> list[str] | None:
        if methods is None:
            return None
        upper = [m.upper() for m in methods]
        unknown = [m for m in upper if m not in _METHODS]
        if unknown or not upper:
            raise ValueError(f"unknown HTTP methods: {unknown}" if unknown else "methods must not be empty")
        return upper


class Service(_Identified):
    name: str = Field(pattern=_NAME)
    # A disabled service's routes answer 404, as in Kong.
    enabled: bool = True
    protocol: Literal["http", "https"] = "http"
    # An upstream's name (load balanced) or a plain host name/address.
    host: str = Field(min_length=1)
    port: int = Field(80, ge=1, le=65535)
    path: str | None = None
    retries: int = Field(5, ge=0, le=32767)
    connect_timeout: int = Field(60000, ge=1, description="milliseconds")
    write_timeout: int = Field(60000, ge=1, description="milliseconds")
    read_timeout: int = Field(60000, ge=1, description="milliseconds")
    client_certificate: Annotated[Any, kong_default_only(None, "upstream client certificates are not supported")] = None
    tls_verify: Annotated[bool | None, kong_default_only(None, "upstream TLS verification settings are not "
                                                               "supported per service")] = None
    tls_verify_depth: Annotated[int | None, kong_default_only(None, "upstream TLS verification settings are not "
                                                                    "supported per service")] = None
    ca_certificates: Annotated[list[str] | None, kong_default_only(None, "upstream CA certificates are not "
                                                                         "supported per service")] = None
    routes: list[Route] = Field(default_factory=list)
    plugins: list[Plugin] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _expand_url(cls, data: Any) -> Any:
        """Kong's `url:` shorthand sets protocol, host, port and path at once."""
        if not isinstance(data, dict) or "url" not in data:
            return data
        data = dict(data)
        url = urlsplit(str(data.pop("url")))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"url must be http(s)://host[:port][/path], got {url.geturl()!r}")
        data["protocol"] = url.scheme
        data["host"] = url.hostname
        data["port"] = url.port or (443 if url.scheme == "https" else 80)
        if url.path and url.path != "/":
            data["path"] = url.path
        return data

    @field_validator("path")
    @classmethod
    def _path(cls, path: str | None) -> str | None:
        if path is not None and not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        return path


class Target(_Identified):
    target: str
    weight: int = Field(100, ge=0, le=65535)

    @field_validator("target")
    @classmethod
    def _target(cls, target: str) -> str:
        host, port = split_target(target)
        if not host:
            raise ValueError(f"target must be host:port, got {target!r}")
        return f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"

    @property
    def host(self) -> str:
        return split_target(self.target)[0]

    @property
    def port(self) -> int:
        return split_target(self.target)[1]


Status = Annotated[int, Field(ge=100, le=999)]
_PASSIVE_HEALTHY = [200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 306, 307, 308]


class PassiveHealthy(_Entity):
    # Statuses that count as a success (others outside `unhealthy.http_statuses` count as nothing).
    http_statuses: list[Status] = Field(default_factory=lambda: list(_PASSIVE_HEALTHY))
    # Successes in a row that bring a target back after its cool-down (0 counts as 1).
    successes: int = Field(0, ge=0, le=255)


class PassiveUnhealthy(_Entity):
    # 0 disables that kind of counting, as in Kong.
    tcp_failures: int = Field(0, ge=0, le=255)
    timeouts: int = Field(0, ge=0, le=255)
    http_failures: int = Field(0, ge=0, le=255)
    http_statuses: list[Status] = Field(default_factory=lambda: [429, 500, 503])


class PassiveHealthcheck(_Entity):
    type: Literal["http", "https"] = "http"
    healthy: PassiveHealthy = Field(default_factory=PassiveHealthy)
    unhealthy: PassiveUnhealthy = Field(default_factory=PassiveUnhealthy)


class ActiveHealthy(_Entity):
    http_statuses: list[Status] = Field(default_factory=lambda: [200, 302])
    # Seconds between probes of a healthy target; 0 disables them.
    interval: float = Field(0, ge=0, le=65535)
    successes: int = Field(0, ge=0, le=255)


class ActiveUnhealthy(_Entity):
    http_statuses: list[Status] = Field(default_factory=lambda: [429, 404, 500, 501, 502, 503, 504, 505])
    # Seconds between probes of an unhealthy target; 0 disables them.
    interval: float = Field(0, ge=0, le=65535)
    tcp_failures: int = Field(0, ge=0, le=255)
    timeouts: int = Field(0, ge=0, le=255)
    http_failures: int = Field(0, ge=0, le=255)


class ActiveHealthcheck(_Entity):
    type: Literal["http", "https", "tcp", "grpc", "grpcs"] = "http"
    concurrency: int = Field(10, ge=1, le=2**31)
    http_path: str = Field("/", pattern=r"^/")
    https_sni: str | None = None
    https_verify_certificate: bool = True
    headers: dict[str, list[str]] | None = None
    timeout: float = Field(1, ge=0, le=65535)
    healthy: ActiveHealthy = Field(default_factory=ActiveHealthy)
    unhealthy: ActiveUnhealthy = Field(default_factory=ActiveUnhealthy)

    @property
    def enabled(self) -> bool:
        return self.healthy.interval > 0 or self.unhealthy.interval > 0

    @field_validator("type")
    @classmethod
    def _http_only(cls, kind: str) -> str:
        if kind not in ("http", "https"):
            raise ValueError(f"active checks of type {kind!r} are not supported (http, https)")
        return kind

    @field_validator("https_sni")
    @classmethod
    def _no_sni(cls, sni: str | None) -> str | None:
        if sni:
            raise ValueError("https_sni is not supported")
        return sni


class Healthchecks(_Entity):
    active: ActiveHealthcheck = Field(default_factory=ActiveHealthcheck)
    passive: PassiveHealthcheck = Field(default_factory=PassiveHealthcheck)
    threshold: Annotated[float, kong_default_only(0, "a health threshold for the whole upstream is not "
                                                     "supported")] = 0



def _no_hash(why: str) -> Any:
    return kong_default_only(None, why)


HashOn = Literal["none", "consumer", "ip", "header", "cookie", "path", "query_arg", "uri_capture"]


class Upstream(_Identified):
    name: str = Field(pattern=_NAME)
    algorithm: Literal["round-robin", "consistent-hashing", "least-connections", "latency"] = "round-robin"
    hash_on: HashOn = "none"
    hash_fallback: HashOn = "none"
    hash_on_header: str | None = None
    hash_fallback_header: str | None = None
    hash_on_cookie: Annotated[str | None, _no_hash("hashing on a cookie is not supported")] = None
    hash_on_cookie_path: Annotated[str, kong_default_only("/", "hashing on a cookie is not supported")] = "/"
    hash_on_query_arg: Annotated[str | None, _no_hash("hashing on a query argument is not supported")] = None
    hash_fallback_query_arg: Annotated[str | None, _no_hash("hashing on a query argument is not supported")] = None
    hash_on_uri_capture: Annotated[str | None, _no_hash("hashing on a URI capture is not supported")] = None
    hash_fallback_uri_capture: Annotated[str | None, _no_hash("hashing on a URI capture is not supported")] = None
    # Only shapes Kong's hashing ring; accepted in Kong's range, no effect on round-robin.
    slots: int = Field(10000, ge=10, le=65536)
    host_header: str | None = None
    client_certificate: Annotated[Any, kong_default_only(None, "upstream client certificates are not supported")] = None
    use_srv_name: Annotated[bool, kong_default_only(False, "SRV names are not resolved here")] = False
    targets: list[Target] = Field(default_factory=list)
    healthchecks: Healthchecks = Field(default_factory=Healthchecks)

    @field_validator("algorithm")
    @classmethod
    def _algorithm(cls, algorithm: str) -> str:
        if algorithm == "latency":
            raise ValueError("the latency algorithm is not supported (round-robin, least-connections, "
                             "consistent-hashing)")
        return algorithm

    @field_validator("hash_on", "hash_fallback")
    @classmethod
    def _hash_on(cls, value: str) -> str:
        if value in ("cookie", "path", "query_arg", "uri_capture"):
            raise ValueError(f"hashing on {value} is not supported (none, consumer, ip, header)")
        return value

    @model_validator(mode="after")
    def _hash_entity_checks(self) -> Upstream:
        """Kong's entity checks for hashing."""
        if self.hash_on == "header" and not self.hash_on_header:
            raise ValueError("hash_on_header: required when hash_on is header")
        if self.hash_fallback == "header" and not self.hash_fallback_header:
            raise ValueError("hash_fallback_header: required when hash_fallback is header")
        if self.hash_on == "none" and self.hash_fallback != "none":
            raise ValueError("hash_fallback: must be none when hash_on is none")
        if self.hash_on != "none" and self.hash_fallback == self.hash_on and self.hash_on != "header":
            raise ValueError("hash_fallback: must differ from hash_on")
        if self.algorithm == "consistent-hashing" and self.hash_on == "none":
            raise ValueError("hash_on: consistent-hashing needs something to hash on")
        return self

    @field_validator("targets")
    @classmethod
    def _unique(cls, targets: list[Target]) -> list[Target]:
        seen = [t.target for t in targets]
        dupes = sorted({t for t in seen if seen.count(t) > 1})
        if dupes:
            raise ValueError(f"duplicate targets: {dupes}")
        return targets


class JwtSecret(_Identified):
    key: str = Field(min_length=1)
    algorithm: Literal["RS256"]
    # PEM text, or a reference `{file:PATH}` resolved at start (PATH may use ${ENV_VAR}).
    rsa_public_key: str = Field(min_length=1)
    # Kong generates an HMAC secret for every credential and decK writes it; RS256 never uses it.
    secret: str | None = None


class Consumer(_Identified):
    username: str = Field(min_length=1)
    custom_id: str | None = None
    jwt_secrets: list[JwtSecret] = Field(default_factory=list)
    # A caller's groups are its platform roles, not consumer ACL groups.
    acls: Annotated[list[Any] | None, kong_default_only(None, "consumer ACL groups are not used here: the "
                                                              "acl plugin checks the caller's roles")] = None
    keyauth_credentials: Annotated[list[Any] | None, kong_default_only(
        None, "API keys are not declared in the file here")] = None


def _none_of(what: str) -> Any:
    return kong_default_only(None, f"{what} are not supported by this gateway")


class KongConfig(_Entity):
    format_version: Literal["3.0"] = Field(alias="_format_version")
    transform: bool | None = Field(None, alias="_transform")
    # decK's metadata (select_tags, defaults); informational.
    info: dict[str, Any] | None = Field(None, alias="_info")
    services: list[Service] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    upstreams: list[Upstream] = Field(default_factory=list)
    plugins: list[Plugin] = Field(default_factory=list)
    consumers: list[Consumer] = Field(default_factory=list)
    certificates: Annotated[list[Any] | None, _none_of("certificates")] = None
    ca_certificates: Annotated[list[Any] | None, _none_of("CA certificates")] = None
    snis: Annotated[list[Any] | None, _none_of("SNIs")] = None
    vaults: Annotated[list[Any] | None, _none_of("vaults")] = None
    consumer_groups: Annotated[list[Any] | None, _none_of("consumer groups")] = None

    @model_validator(mode="after")
    def _references(self) -> KongConfig:
        services = _unique_names("services", [s.name for s in self.services])
        routes = _unique_names("routes", [r.name for _, r in self.all_routes()])
        _unique_names("upstreams", [u.name for u in self.upstreams])
        _unique_names("consumers", [c.username for c in self.consumers])
        _unique_names("jwt_secrets keys", [j.key for c in self.consumers for j in c.jwt_secrets])
        for i, route in enumerate(self.routes):
            if route.service is None:
                raise ValueError(f"routes[{i}] ({route.name}): a top-level route needs 'service'")
            if route.service not in services:
                raise ValueError(f"routes[{i}] ({route.name}): unknown service '{route.service}'")
        for service in self.services:
            for route in service.routes:
                if route.service not in (None, service.name):
                    raise ValueError(f"route {route.name}: nested under service {service.name} "
                                     f"but names service '{route.service}'")
            _nested_plugins_unscoped(f"service {service.name}", service.plugins)
            for route in service.routes:
                _nested_plugins_unscoped(f"route {route.name}", route.plugins)
        for route in self.routes:
            _nested_plugins_unscoped(f"route {route.name}", route.plugins)
        for i, plugin in enumerate(self.plugins):
            if plugin.service is not None and plugin.service not in services:
                raise ValueError(f"plugins[{i}] ({plugin.name}): unknown service '{plugin.service}'")
            if plugin.route is not None and plugin.route not in routes:
                raise ValueError(f"plugins[{i}] ({plugin.name}): unknown route '{plugin.route}'")
        scopes: dict[tuple[str, str | None, str | None], int] = {}
        for scope, plugin in self.all_plugins():
            key = (plugin.name, *scope)
            scopes[key] = scopes.get(key, 0) + 1
            if scopes[key] > 1:
                raise ValueError(f"plugin '{plugin.name}' is configured twice for {_describe_scope(scope)}")
            if plugin.name in GLOBAL_ONLY and scope != (None, None):
                raise ValueError(f"plugin '{plugin.name}' can only be configured globally here")
        return self

    def all_routes(self) -> list[tuple[str, Route]]:
        """Every route with the name of its service, nested ones first."""
        found = [(s.name, r) for s in self.services for r in s.routes]
        found += [(r.service or "", r) for r in self.routes]
        return found

    def all_plugins(self) -> list[tuple[tuple[str | None, str | None], Plugin]]:
        """Every plugin with its scope (service name, route name); (None, None) is global."""
        found: list[tuple[tuple[str | None, str | None], Plugin]] = []
        for p in self.plugins:
            found.append(((p.service if p.route is None else None, p.route), p))
        for s in self.services:
            found += [((s.name, None), p) for p in s.plugins]
            found += [((None, r.name), p) for r in s.routes for p in r.plugins]
        found += [((None, r.name), p) for r in self.routes for p in r.plugins]
        return found

    def upstream(self, name: str) -> Upstream | None:
        return next((u for u in self.upstreams if u.name == name), None)


def split_target(target: str) -> tuple[str, int]:
    """'host:port' (or '[v6]:port') to (host, port); Kong's default port is 8000."""
    target = target.strip()
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = target.rpartition(":") if ":" in target else (target, "", "")
    if port and (not port.isdigit() or not 1 <= int(port) <= 65535):
        raise ValueError(f"bad port in target {target!r}")
    return host, int(port) if port else 8000


def _reference(value: Any) -> Any:
    """A foreign key may be written as a name or as {name: ...} (decK style)."""
    if isinstance(value, dict):
        if set(value) != {"name"}:
            raise ValueError("a reference must be a name or {name: ...}")
        return value["name"]
    return value


def _unique_names(kind: str, names: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"duplicate name in {kind}: '{name}'")
        seen.add(name)
    return seen


def _nested_plugins_unscoped(where: str, plugins: list[Plugin]) -> None:
    for p in plugins:
        if p.service is not None or p.route is not None:
            raise ValueError(f"plugin '{p.name}' under {where} must not name a service or route")


def _describe_scope(scope: tuple[str | None, str | None]) -> str:
    service, route = scope
    if route:
        return f"route '{route}'"
    if service:
        return f"service '{service}'"
    return "the whole gateway"


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ""
        for part in err.get("loc", ()):
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        lines.append(f"  {loc or '(top level)'}: {msg}")
    return f"{source}: invalid gateway configuration:\n" + "\n".join(lines)


def parse_config(data: Any, source: str = "<config>") -> KongConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with _format_version: \"3.0\"")
    try:
        return KongConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None


def load_config(path: str | os.PathLike[str]) -> KongConfig:
    """Reads and validates a kong.yml; ConfigError names the file and every bad entry."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the gateway configuration: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, str(path))


def with_targets(config: KongConfig, targets: Mapping[str, Iterable[str | Mapping[str, Any]]]) -> KongConfig:
    """A copy of `config` whose named upstreams have these targets instead
    ("host:port" strings, or {target, weight} mappings)."""
    unknown = sorted(set(targets) - {u.name for u in config.upstreams})
    if unknown:
        raise ConfigError(f"no such upstreams: {', '.join(unknown)}")
    data = dump_data(config)
    for upstream in data.get("upstreams", []):
        if upstream["name"] in targets:
            upstream["targets"] = [{"target": t} if isinstance(t, str) else dict(t) for t in targets[upstream["name"]]]
    return parse_config(data, "with_targets")


def dump_data(config: KongConfig) -> dict[str, Any]:
    """The configuration as plain data in kong.yml layout (defaults left out)."""
    return config.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)


def dump_config(config: KongConfig, header: str | None = None) -> str:
    text: str = yaml.safe_dump(dump_data(config), sort_keys=False, allow_unicode=True, default_flow_style=False)
    if header:
        text = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + text
    return text


def write_config(config: KongConfig, path: str | os.PathLike[str], header: str | None = None) -> Path:
    """Writes `config` to `path` atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(dump_config(config, header), encoding="utf-8")
    os.replace(tmp, path)
    return path


_REF = re.compile(r"^\{file:(?P<path>.+)\}$")
_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")


def secret_file(value: str, env: Mapping[str, str]) -> Path | None:
    """The file of a `{file:PATH}` reference (None for inline text)."""
    match = _REF.match(value.strip())
    if match is None:
        return None

    def expand(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in env:
            raise ConfigError(f"{value}: environment variable {name} is not set")
        return env[name]

    return Path(_VAR.sub(expand, match.group("path")))


def resolve_secret_value(value: str, env: Mapping[str, str]) -> str:
    """PEM text as is; `{file:PATH}` replaced by the file's content, `${VAR}` in PATH
    expanded from `env` (deviation from Kong, which has vault references instead)."""
    match = _REF.match(value.strip())
    if match is None:
        return value

    def expand(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in env:
            raise ConfigError(f"{value}: environment variable {name} is not set")
        return env[name]

    path = Path(_VAR.sub(expand, match.group("path")))
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{value}: cannot read {path}: {exc.strerror}") from None
