"""kong.yml parsing: the shipped file, round-trips through the writer, and clear errors."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import (
    ConfigError,
    dump_config,
    load_config,
    parse_config,
    resolve_secret_value,
    split_target,
    with_targets,
    write_config,
)
from gateway.plugins.acl.schema import AclConfig
from gateway.plugins.jwt.schema import JwtConfig
from gateway.plugins.request_size_limiting.schema import RequestSizeLimitingConfig
from gateway.router import Router
from gateway.settings import DEFAULT_CONFIG


def minimal(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "_format_version": "3.0",
        "upstreams": [{"name": "up", "targets": [{"target": "127.0.0.1:9001"}]}],
        "services": [{"name": "svc", "host": "up", "routes": [{"name": "r", "paths": ["/api/v1/x"]}]}],
    }
    data.update(extra)
    return data


def error_of(data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "test.yml")
    return str(info.value)


def test_shipped_kong_yml_is_the_make_up_layout() -> None:
    config = load_config(DEFAULT_CONFIG)
    targets = {u.name: [t.target for t in u.targets] for u in config.upstreams}
    assert targets == {
        "upload-upstream": ["127.0.0.1:8101", "127.0.0.1:8102"],
        "search-upstream": ["127.0.0.1:8111", "127.0.0.1:8112"],
        "model-serving-upstream": ["127.0.0.1:8121"],
        "web-upstream": ["127.0.0.1:8141", "127.0.0.1:8142"],
    }
    routes = {r.name: (svc, r.paths, r.strip_path) for svc, r in config.all_routes()}
    assert routes["documents"] == ("upload", ["/api/v1/documents"], False)
    assert routes["quota"] == ("upload", ["/api/v1/quota"], False)
    # Sub-paths of a document (content, text) need no route of their own: prefixes match whole segments.
    text_route = Router(config).match("GET", "/api/v1/documents/0b7e5a8e-0000-4000-8000-000000000000/text")
    assert text_route.entry.route.name == "documents"
    assert routes["search"] == ("search", ["/api/v1/search"], False)
    assert routes["predict"] == ("model-serving", ["/api/v1/predict"], False)
    documents_limit = next(p for s, r in config.all_routes() if r.name == "documents" for p in r.plugins)
    assert isinstance(documents_limit.config, RequestSizeLimitingConfig)
    assert documents_limit.config.limit_bytes == 100 * 1024 * 1024
    router = Router(config)
    # Every API path needs a token (unknown ones included); the UI's pages do not.
    for path in ("/api/v1/documents", "/api/v1/search", "/api/v1/quota", "/api/v1/predict", "/api/v1/nowhere"):
        jwt = router.match("GET" if "predict" not in path else "POST", path).entry.plugins.get("jwt")
        assert isinstance(jwt, JwtConfig) and jwt.claims_to_verify == ["exp"], path
    assert "jwt" not in router.match("GET", "/search").entry.plugins
    assert router.match("GET", "/").entry.service.name == "web"
    assert router.match("POST", "/upload").entry.plugins["request-size-limiting"].limit_bytes == 100 * 1024 * 1024
    # A training dataset uploaded through the UI's form may be as large as the datasets API takes.
    for path in ("/admin/datasets", "/admin/datasets/0b7e5a8e-0000-4000-8000-000000000000/versions"):
        entry = router.match("POST", path).entry
        assert entry.service.name == "web" and "jwt" not in entry.plugins, path
        assert entry.plugins["request-size-limiting"].limit_bytes == 64 * 1024 * 1024, path
    assert router.match("GET", "/admin/datasets").entry.route.name == "web"
    passive = config.upstreams[0].healthchecks.passive
    assert passive.unhealthy.tcp_failures == 1


def test_with_targets_and_writer_round_trip(tmp_path: Path) -> None:
    config = load_config(DEFAULT_CONFIG)
    moved = with_targets(config, {"upload-upstream": ["127.0.0.1:9101", {"target": "127.0.0.1:9102", "weight": 50}]})
    upload = moved.upstream("upload-upstream")
    assert upload is not None
    assert [(t.target, t.weight) for t in upload.targets] == [("127.0.0.1:9101", 100), ("127.0.0.1:9102", 50)]
    assert moved.upstream("search-upstream") == config.upstream("search-upstream")
    assert config.upstream("upload-upstream").targets[0].target == "127.0.0.1:8101"  # original untouched
    path = write_config(moved, tmp_path / "out" / "kong.yml", header="generated for a test\nsecond line")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# generated for a test\n# second line\n")
    assert load_config(path) == moved
    assert yaml.safe_load(text)["_format_version"] == "3.0"
    assert "{file:${DOCTAG_JWT_PUBLIC_KEY_FILE}}" in text  # references stay references
    with pytest.raises(ConfigError, match="no such upstreams: nope"):
        with_targets(config, {"nope": ["127.0.0.1:1"]})


def test_service_url_shorthand_and_top_level_routes_and_plugins() -> None:
    config = parse_config({
        "_format_version": "3.0",
        "services": [{"name": "web", "url": "http://127.0.0.1:8200/base"}],
        "routes": [{"name": "ui", "service": {"name": "web"}, "paths": ["/"], "methods": ["get"]}],
        "plugins": [{"name": "acl", "route": "ui", "config": {"deny": ["user"]}}],
    })
    service = config.services[0]
    assert (service.protocol, service.host, service.port, service.path) == ("http", "127.0.0.1", 8200, "/base")
    assert config.routes[0].service == "web" and config.routes[0].methods == ["GET"]
    assert config.routes[0].strip_path is True  # Kong's default
    assert config.all_plugins()[0][0] == (None, "ui")
    assert parse_config(yaml.safe_load(dump_config(config))) == config


def test_targets_default_port_and_ipv6() -> None:
    assert split_target("10.0.0.1") == ("10.0.0.1", 8000)
    assert split_target("[::1]:81") == ("::1", 81)
    with pytest.raises(ValueError):
        split_target("host:99999")


@pytest.mark.parametrize(("data", "expected"), [
    ("just a string", "top level must be a mapping"),
    ({"services": []}, "_format_version"),
    ({"_format_version": "1.1"}, "_format_version"),
    (minimal(unknown_key=1), "unknown_key: Extra inputs are not permitted"),
    (minimal(services=[{"name": "svc", "host": "up", "retries": -1}]), "services[0].retries"),
    (minimal(services=[{"name": "svc", "host": "up", "routes": [{"name": "r", "paths": ["api"]}]}]),
     "services[0].routes[0].paths: a path must start with '/'"),
    (minimal(services=[{"name": "svc", "host": "up", "routes": [{"name": "r", "paths": ["~/a.*"]}]}]),
     "regex paths are not supported"),
    (minimal(services=[{"name": "svc", "host": "up", "routes": [{"name": "r", "paths": ["/a"],
                                                                    "methods": ["FETCH"]}]}]), "unknown HTTP methods"),
    (minimal(services=[{"name": "svc", "host": "up"}, {"name": "svc", "host": "up"}]), "duplicate name in services"),
    (minimal(routes=[{"name": "r2", "service": "ghost", "paths": ["/b"]}]), "unknown service 'ghost'"),
    (minimal(routes=[{"name": "r", "service": "svc", "paths": ["/b"]}]), "duplicate name in routes: 'r'"),
    (minimal(routes=[{"name": "r2", "paths": ["/b"]}]), "a top-level route needs 'service'"),
    (minimal(upstreams=[{"name": "up", "algorithm": "latency"}]), "upstreams[0].algorithm: the latency algorithm"),
    (minimal(upstreams=[{"name": "up", "targets": [{"target": "a:1"}, {"target": "a:1"}]}]), "duplicate targets"),
    (minimal(upstreams=[{"name": "up", "healthchecks": {"active": {"type": "grpc", "healthy": {"interval": 5}}}}]),
     "upstreams[0].healthchecks.active.type: active checks of type 'grpc' are not supported"),
    (minimal(plugins=[{"name": "oauth2"}]), "plugin 'oauth2' is not implemented"),
    (minimal(plugins=[{"name": "rate-limiting"}]), "at least one of these fields must be non-empty: second, minute"),
    (minimal(plugins=[{"name": "jwt", "config": {"claims_to_verify": ["iat"]}}]),
     "plugins[0].config.claims_to_verify[0]"),
    (minimal(plugins=[{"name": "jwt", "config": {"anonymous": "guest"}}]),
     "plugins[0].config.anonymous: anonymous consumers are not supported"),
    (minimal(plugins=[{"name": "jwt", "config": {"not_a_key": 1}}]),
     "plugins[0].config.not_a_key: Extra inputs are not permitted"),
    (minimal(plugins=[{"name": "acl", "config": {"allow": ["a"], "deny": ["b"]}}]),
     "exactly one of 'allow' and 'deny'"),
    (minimal(plugins=[{"name": "acl", "config": {}}]), "exactly one of 'allow' and 'deny'"),
    (minimal(plugins=[{"name": "request-size-limiting", "config": {"allowed_payload_size": 0}}]),
     "allowed_payload_size"),
    (minimal(plugins=[{"name": "request-size-limiting", "config": {"size_unit": "gigabytes"}}]), "size_unit"),
    (minimal(plugins=[{"name": "correlation-id", "service": "svc"}]), "can only be configured globally"),
    (minimal(plugins=[{"name": "acl", "config": {"allow": ["a"]}}, {"name": "acl", "config": {"allow": ["b"]}}]),
     "configured twice for the whole gateway"),
    (minimal(plugins=[{"name": "acl", "service": "nope", "config": {"allow": ["a"]}}]), "unknown service 'nope'"),
    (minimal(plugins=[{"name": "acl", "route": "nope", "config": {"allow": ["a"]}}]), "unknown route 'nope'"),
    (minimal(consumers=[{"username": "c", "jwt_secrets": [{"key": "k", "algorithm": "HS256",
                                                           "rsa_public_key": "x"}]}]), "algorithm"),
    (minimal(consumers=[{"username": "a", "jwt_secrets": [{"key": "k", "algorithm": "RS256", "rsa_public_key": "x"}]},
                        {"username": "b", "jwt_secrets": [{"key": "k", "algorithm": "RS256", "rsa_public_key": "y"}]}]),
     "duplicate name in jwt_secrets keys"),
])
def test_bad_config_errors_name_the_entry(data: Any, expected: str) -> None:
    message = error_of(data)
    assert message.startswith("test.yml")
    assert expected in message


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("_format_version: '3.0'\nservices: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yml: not valid YAML"):
        load_config(bad)


def test_plugin_defaults_follow_kong() -> None:
    config = parse_config(minimal(plugins=[{"name": "request-size-limiting"}, {"name": "jwt"},
                                           {"name": "correlation-id"}]))
    limit, jwt, corr = (p.config for p in config.plugins)
    assert limit.limit_bytes == 128 * 1024 * 1024
    assert jwt.key_claim_name == "iss" and jwt.header_names == ["authorization"]
    assert (corr.header_name, corr.generator, corr.echo_downstream) == ("Kong-Request-ID", "uuid#counter", False)
    assert isinstance(parse_config(minimal(plugins=[{"name": "acl", "config": {"allow": ["user"]}}]))
                      .plugins[0].config, AclConfig)


def test_file_references_resolve(tmp_path: Path) -> None:
    key = tmp_path / "pub.pem"
    key.write_text("-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----\n", encoding="utf-8")
    assert resolve_secret_value("{file:${KEYS}/pub.pem}", {"KEYS": str(tmp_path)}).startswith("-----BEGIN")
    assert resolve_secret_value(f"{{file:{key}}}", {}).endswith("-----\n")
    assert resolve_secret_value("-----BEGIN PUBLIC KEY-----", {}) == "-----BEGIN PUBLIC KEY-----"
    with pytest.raises(ConfigError, match="KEYS is not set"):
        resolve_secret_value("{file:${KEYS}/pub.pem}", {})
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_secret_value(f"{{file:{tmp_path / 'nope.pem'}}}", {})
