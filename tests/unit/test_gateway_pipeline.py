"""The plugin pipeline: plugins found by folder, run in Kong's priority order, the
correlation id on every answer (500s included, the same id in header, body and log),
and the proxy port free of operational routes."""
from __future__ import annotations

import logging
import uuid
from pathlib import Path

import httpx

from gateway.app import build_apps
from gateway.config import parse_config, write_config
from gateway.plugins import PLUGIN_CONFIGS, handler_classes
from gateway.plugins.base import PluginHandler
from gateway.settings import DEFAULT_CONFIG, GatewaySettings
from services.common.auth import ensure_keypair
from services.common.http import create_app
from services.common.logging import _ContextFilter


def test_every_plugin_folder_has_a_schema_and_a_handler() -> None:
    classes = handler_classes()
    assert set(classes) == set(PLUGIN_CONFIGS)
    assert {"correlation-id", "jwt", "acl", "request-size-limiting"} <= set(classes)
    for name, handler in classes.items():
        assert issubclass(handler, PluginHandler), name
        assert handler.PRIORITY > 0, name


def _settings(tmp_path: Path, config: Path) -> GatewaySettings:
    private, public = ensure_keypair(tmp_path / "keys")
    return GatewaySettings(gateway_config=config, jwt_private_key_file=private, jwt_public_key_file=public,
                           state_dir=tmp_path / "state")


def _data(**extra: object) -> dict[str, object]:
    return {
        "_format_version": "3.0",
        "services": [{"name": "svc", "url": "http://127.0.0.1:9", "routes": [
            {"name": "open", "paths": ["/open"],
             "plugins": [{"name": "request-size-limiting", "config": {"allowed_payload_size": 1}}]},
            {"name": "admin", "paths": ["/admin"], "plugins": [{"name": "acl", "config": {"allow": ["x"]}}]}]}],
        "plugins": [{"name": "acl", "config": {"allow": ["user"]}},
                    {"name": "correlation-id", "config": {"header_name": "X-Request-ID", "generator": "uuid",
                                                          "echo_downstream": True}},
                    {"name": "jwt", "config": {"claims_to_verify": ["exp"]}}],
        "consumers": [{"username": "c", "jwt_secrets": [
            {"key": "doctag", "algorithm": "RS256", "rsa_public_key": "{file:${DOCTAG_JWT_PUBLIC_KEY_FILE}}"}]}],
        **extra,
    }


def test_plugins_run_by_priority_whatever_the_declaration_order(tmp_path: Path) -> None:
    path = write_config(parse_config(_data(), "t"), tmp_path / "kong.yml")
    apps = build_apps(_settings(tmp_path, path), parse_config(_data(), "t"))
    pipeline = apps.gateway.runtime.pipeline
    # correlation-id 100001, jwt 1450, request-size-limiting 951, acl 950 (Kong's priorities).
    assert pipeline.names() == ["correlation-id", "jwt", "acl"]
    assert pipeline.names("open") == ["correlation-id", "jwt", "request-size-limiting", "acl"]
    assert pipeline.names("admin") == ["correlation-id", "jwt", "acl"]
    assert pipeline.by_route["admin"][-1].conf.allow == ["x"]  # the route's acl replaces the global one


def test_shipped_config_compiles(tmp_path: Path) -> None:
    from gateway.config import load_config

    apps = build_apps(_settings(tmp_path, DEFAULT_CONFIG), load_config(DEFAULT_CONFIG))
    assert apps.gateway.runtime.pipeline.names("models") == [
        "correlation-id", "jwt", "key-auth", "request-size-limiting", "acl", "rate-limiting",
        "response-transformer", "prometheus"]


async def test_proxy_port_has_no_operational_routes(tmp_path: Path) -> None:
    path = write_config(parse_config(_data(), "t"), tmp_path / "kong.yml")
    apps = build_apps(_settings(tmp_path, path), parse_config(_data(), "t"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=apps.proxy), base_url="http://gw") as proxy:
        for route in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
            r = await proxy.get(route, headers={"X-Request-ID": "rid-1"})
            assert r.status_code == 404, route
            assert r.json()["request_id"] == r.headers["x-request-id"] == "rid-1"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=apps.status), base_url="http://st") as status:
        assert (await status.get("/healthz")).json()["status"] == "ok"
        assert "doctag_gateway_requests_total" in (await status.get("/metrics")).text


async def test_correlation_id_kept_generated_and_echoed(tmp_path: Path) -> None:
    path = write_config(parse_config(_data(), "t"), tmp_path / "kong.yml")
    apps = build_apps(_settings(tmp_path, path), parse_config(_data(), "t"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=apps.proxy), base_url="http://gw") as proxy:
        r = await proxy.get("/open", headers={"X-Request-ID": "abc-123"})
        assert r.status_code == 401
        assert r.headers.get_list("x-request-id") == ["abc-123"] and r.json()["request_id"] == "abc-123"
        r = await proxy.get("/open", headers={"X-Request-ID": "not valid!"})
        generated = r.headers["x-request-id"]
        assert generated != "not valid!" and str(uuid.UUID(generated)) == generated
        assert r.json()["request_id"] == generated


async def test_correlation_id_other_header_and_no_echo(tmp_path: Path) -> None:
    data = _data()
    data["plugins"][1]["config"] = {"header_name": "Kong-Request-ID", "echo_downstream": False}  # type: ignore[index]
    path = write_config(parse_config(data, "t"), tmp_path / "kong.yml")
    apps = build_apps(_settings(tmp_path, path), parse_config(data, "t"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=apps.proxy), base_url="http://gw") as proxy:
        r = await proxy.get("/open", headers={"Kong-Request-ID": "k-1"})
        assert r.json()["request_id"] == "k-1"
        assert "kong-request-id" not in r.headers and "x-request-id" not in r.headers


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.addFilter(_ContextFilter("t"))
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_unhandled_error_is_a_500_with_one_request_id() -> None:
    app = create_app("t", title="t")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaput")

    handler = _Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            r = await client.get("/boom", headers={"X-Request-ID": "boom-1"})
            other = await client.get("/boom")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert r.status_code == 500 and r.headers["content-type"].startswith("application/problem+json")
    assert r.headers["x-request-id"] == r.json()["request_id"] == "boom-1"
    assert other.json()["request_id"] == other.headers["x-request-id"] != "boom-1"
    errors = [rec for rec in handler.records if rec.levelno == logging.ERROR]
    assert [rec.request_id for rec in errors] == ["boom-1", other.json()["request_id"]]  # type: ignore[attr-defined]
    assert "kaput" in str(errors[0].exc_info[1])  # type: ignore[index]
    access = [rec for rec in handler.records if rec.getMessage() == "request"]
    assert [(rec.request_id, rec.status) for rec in access] == [  # type: ignore[attr-defined]
        ("boom-1", 500), (other.json()["request_id"], 500)]


async def test_cors_preflight_answered_and_headers_only_for_configured_origins(tmp_path: Path) -> None:
    data = _data()
    data["plugins"].append({"name": "cors", "config": {  # type: ignore[attr-defined]
        "origins": ["https://doc.example.go.kr", r"https://[a-z]+\.dept\.go\.kr"], "credentials": True,
        "max_age": 600, "exposed_headers": ["X-Request-ID"]}})
    path = write_config(parse_config(data, "t"), tmp_path / "kong.yml")
    apps = build_apps(_settings(tmp_path, path), parse_config(data, "t"))
    assert apps.gateway.runtime.pipeline.names("open")[:2] == ["correlation-id", "cors"]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=apps.proxy), base_url="http://gw") as proxy:
        preflight = {"Origin": "https://hr.dept.go.kr", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization,content-type"}
        r = await proxy.options("/open", headers=preflight)  # answered before jwt: no token needed
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://hr.dept.go.kr"
        assert r.headers["access-control-allow-credentials"] == "true"
        assert r.headers["access-control-max-age"] == "600"
        assert r.headers["access-control-allow-headers"] == "authorization,content-type"
        r = await proxy.options("/open", headers={**preflight, "Origin": "https://evil.example.com"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        r = await proxy.get("/open", headers={"Origin": "https://doc.example.go.kr"})
        assert r.status_code == 401  # the actual request still needs its token
        assert r.headers["access-control-allow-origin"] == "https://doc.example.go.kr"
        assert r.headers["access-control-expose-headers"] == "X-Request-ID"
        r = await proxy.get("/open", headers={"Origin": "https://evil.example.com"})
        assert "access-control-allow-origin" not in r.headers
