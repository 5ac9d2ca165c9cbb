"""decK fidelity: a `deck dump` of Kong 3.x with every key decK writes loads; a key at
Kong's default is accepted; a non-default value of something this gateway does not
implement is refused with a message naming the key."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import ConfigError, parse_config
from gateway.plugins.jwt.handler import find_token
from gateway.router import NoRoute, Router

DECK = Path(__file__).with_name("data") / "deck_dump_kong3.yaml"


def deck() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(DECK.read_text(encoding="utf-8"))
    return data


def test_deck_dump_loads_and_means_what_kong_means() -> None:
    config = parse_config(deck(), str(DECK))
    router = Router(config)
    match = router.match("GET", "/api/v1/search")
    assert match.entry.service.name == "search"
    plugins = match.entry.plugins
    assert plugins["acl"].deny == ["analyst"] and plugins["acl"].hide_groups_header  # the route's acl wins
    assert plugins["request-size-limiting"].limit_bytes == 1024  # the service's limit over the global one
    assert plugins["jwt"].uri_param_names == ["jwt"] and plugins["jwt"].claims_to_verify == ["exp"]
    assert plugins["correlation-id"].header_name == "X-Request-ID"
    upstream = config.upstream("search-upstream")
    assert upstream is not None and [t.target for t in upstream.targets] == ["127.0.0.1:8111", "127.0.0.1:8112"]
    assert 404 not in upstream.healthchecks.passive.healthy.http_statuses
    # A disabled service's routes do not match (Kong: 404).
    with pytest.raises(NoRoute):
        router.match("GET", "/legacy/x")


def test_jwt_default_uri_param_is_honoured_not_ignored() -> None:
    conf = parse_config(deck(), "deck").plugins[1].config
    assert find_token({}, conf, b"jwt=a.b.c&x=1") == "a.b.c"
    assert find_token({"cookie": "session=x"}, conf, b"") is None


def _set(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    node: Any = data
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    return data


@pytest.mark.parametrize(("path", "value", "message"), [
    ("services.0.routes.0.hosts", ["example.org"], "services[0].routes[0].hosts: matching routes by host is not"),
    ("services.0.routes.0.headers", {"x-v": ["1"]}, "services[0].routes[0].headers: matching routes by header"),
    ("services.0.routes.0.regex_priority", 5, "services[0].routes[0].regex_priority: regex paths are not supported"),
    ("services.0.routes.0.path_handling", "v1", "services[0].routes[0].path_handling: only path_handling v0"),
    ("services.0.routes.0.protocols", ["https"], "services[0].routes[0].protocols: a route must accept http"),
    ("services.0.routes.0.https_redirect_status_code", 418, "services[0].routes[0].https_redirect_status_code"),
    ("services.0.routes.0.snis", ["a.example"], "services[0].routes[0].snis: matching routes by SNI"),
    ("services.0.tls_verify", True, "services[0].tls_verify: upstream TLS verification settings are not supported"),
    ("services.0.client_certificate", {"id": "x"}, "services[0].client_certificate: upstream client certificates"),
    ("services.0.protocol", "grpc", "services[0].protocol"),
    ("services.0.plugins.0.consumer", {"username": "x"}, "services[0].plugins[0].consumer: plugins scoped to a "
                                                         "consumer are not supported"),
    ("upstreams.0.algorithm", "latency", "upstreams[0].algorithm: the latency algorithm is not supported"),
    ("upstreams.0.algorithm", "consistent-hashing", "upstreams[0]: hash_on: consistent-hashing needs something"),
    ("upstreams.0.hash_on", "header", "upstreams[0]: hash_on_header: required when hash_on is header"),
    ("upstreams.0.hash_on", "cookie", "upstreams[0].hash_on: hashing on cookie is not supported"),
    ("upstreams.0.hash_on_cookie", "sid", "upstreams[0].hash_on_cookie: hashing on a cookie is not supported"),
    ("upstreams.0.use_srv_name", True, "upstreams[0].use_srv_name: SRV names are not resolved here"),
    ("upstreams.0.slots", 5, "upstreams[0].slots"),
    ("upstreams.0.healthchecks.threshold", 50, "upstreams[0].healthchecks.threshold: a health threshold"),
    ("upstreams.0.healthchecks.active.type", "tcp",
     "upstreams[0].healthchecks.active.type: active checks of type 'tcp' are not supported"),
    ("upstreams.0.healthchecks.passive.unhealthy.http_statuses", [1000], "http_statuses[0]"),
    ("plugins.0.protocols", ["grpc", "grpcs"], "plugins[0].protocols: a plugin must apply to both http and https"),
    ("plugins.0.config.generator", "tracker", "plugins[0].config.generator: generator 'tracker'"),
    ("plugins.1.config.anonymous", "guest", "plugins[1].config.anonymous: anonymous consumers are not supported"),
    ("plugins.1.config.secret_is_base64", True, "plugins[1].config.secret_is_base64: secret_is_base64: true is not"),
    ("plugins.1.config.maximum_expiration", 31_536_001, "plugins[1].config.maximum_expiration"),
    ("plugins.2.config.include_consumer_groups", True, "plugins[2].config.include_consumer_groups: consumer groups"),
    ("plugins.2.config.deny", ["x"], "plugins[2].config: Value error, exactly one of 'allow' and 'deny'"),
    ("plugins.3.config.size_unit", "gigabytes", "plugins[3].config.size_unit"),
    ("plugins.3.ordering", {"before": {"access": ["jwt"]}}, "plugins[3].ordering: dynamic plugin ordering"),
    ("consumers.0.acls", [{"group": "admins"}], "consumers[0].acls: consumer ACL groups are not used here"),
    ("consumers.0.jwt_secrets.0.algorithm", "HS256", "consumers[0].jwt_secrets[0].algorithm"),
    ("certificates", [{"cert": "x", "key": "y"}], "certificates: certificates are not supported"),
    ("vaults", [{"name": "env", "prefix": "e"}], "vaults: vaults are not supported"),
])
def test_non_default_values_of_unimplemented_keys_are_refused_by_name(path: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_set(deck(), path, value), "deck.yaml")
    assert message.replace("Value error, ", "") in str(info.value)


def test_unknown_keys_still_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_set(deck(), "services.0.routes.0.expression", 'http.path == "/x"'), "deck.yaml")
    assert "services[0].routes[0].expression: Extra inputs are not permitted" in str(info.value)
