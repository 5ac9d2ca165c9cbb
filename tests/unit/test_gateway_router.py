"""Route matching (longest prefix on whole segments, 404 vs 405), upstream paths and
plugin scoping (route over service over global)."""
from __future__ import annotations

import pytest

from gateway.config import parse_config
from gateway.router import (
    MethodNotAllowed,
    NoRoute,
    Router,
    effective_plugins,
    prefix_matches,
)

CONFIG = parse_config({
    "_format_version": "3.0",
    "services": [
        {"name": "upload", "host": "up", "routes": [
            {"name": "documents", "paths": ["/api/v1/documents"], "strip_path": False,
             "methods": ["GET", "POST"]},
            {"name": "documents-admin", "paths": ["/api/v1/documents/admin"], "strip_path": True,
             "plugins": [{"name": "acl", "config": {"allow": ["tenant_admin"]}}]},
            {"name": "quota", "paths": ["/api/v1/quota"], "strip_path": False, "methods": ["GET"]},
        ], "plugins": [{"name": "request-size-limiting", "config": {"allowed_payload_size": 100}}]},
        {"name": "search", "url": "http://127.0.0.1:8111/internal/", "routes": [
            {"name": "search", "paths": ["/api/v1/search"], "strip_path": True, "methods": ["GET"]},
        ], "plugins": [{"name": "jwt", "enabled": False}]},
        {"name": "catchall", "host": "up", "routes": [{"name": "root", "paths": ["/"], "methods": ["GET"]}]},
    ],
    "plugins": [
        {"name": "jwt"},
        {"name": "acl", "config": {"allow": ["user"]}},
        {"name": "request-size-limiting", "config": {"allowed_payload_size": 1}},
        {"name": "acl", "service": "search", "config": {"deny": ["guest"]}},
    ],
})


@pytest.fixture(scope="module")
def router() -> Router:
    return Router(CONFIG)


def test_prefix_matching_is_segment_aware() -> None:
    assert prefix_matches("/api/v1/quota", "/api/v1/quota")
    assert prefix_matches("/api/v1/quota", "/api/v1/quota/x")
    assert not prefix_matches("/api/v1/quota", "/api/v1/quotas")
    assert prefix_matches("/api/v1/", "/api/v1/anything")
    assert prefix_matches("/", "/whatever")


def test_longest_prefix_wins(router: Router) -> None:
    assert router.match("GET", "/api/v1/documents/123").entry.route.name == "documents"
    assert router.match("GET", "/api/v1/documents/admin/stats").entry.route.name == "documents-admin"
    assert router.match("GET", "/api/v1/documents/administrator").entry.route.name == "documents"
    assert router.match("GET", "/api/v1/quota").entry.route.name == "quota"
    assert router.match("GET", "/api/v1/quotas").entry.route.name == "root"


def test_method_mismatch_is_405_and_no_route_is_404(router: Router) -> None:
    with pytest.raises(MethodNotAllowed) as info:
        router.match("DELETE", "/api/v1/search")
    assert info.value.allowed == ["GET"]
    with pytest.raises(MethodNotAllowed) as info:
        router.match("DELETE", "/api/v1/documents/1")
    assert info.value.allowed == ["GET", "POST"]
    # A route that allows the method is chosen over a longer one that does not.
    nested = Router(parse_config({"_format_version": "3.0", "services": [{"name": "s", "host": "h", "routes": [
        {"name": "long", "paths": ["/a/b"], "methods": ["POST"]}, {"name": "short", "paths": ["/a"]}]}]}))
    assert nested.match("GET", "/a/b/c").entry.route.name == "short"
    assert nested.match("POST", "/a/b/c").entry.route.name == "long"
    only = Router(parse_config({"_format_version": "3.0", "services": [
        {"name": "s", "host": "h", "routes": [{"name": "r", "paths": ["/a"], "methods": ["GET"]}]}]}))
    with pytest.raises(NoRoute):
        only.match("GET", "/b")
    with pytest.raises(MethodNotAllowed):
        only.match("POST", "/a/x")


def test_upstream_paths(router: Router) -> None:
    documents = router.match("POST", "/api/v1/documents/1/content")
    assert documents.upstream_path("/api/v1/documents/1/content") == "/api/v1/documents/1/content"
    admin = router.match("GET", "/api/v1/documents/admin/stats")
    assert admin.upstream_path("/api/v1/documents/admin/stats") == "/stats"
    assert admin.upstream_path("/api/v1/documents/admin") == "/"
    search = router.match("GET", "/api/v1/search/suggest")  # service path /internal/
    assert search.upstream_path("/api/v1/search/suggest") == "/internal/suggest"
    assert search.upstream_path("/api/v1/search") == "/internal"


def test_plugin_scoping_most_specific_wins(router: Router) -> None:
    documents = router.match("GET", "/api/v1/documents").entry.plugins
    assert documents["acl"].allow == ["user"]  # global
    assert documents["request-size-limiting"].allowed_payload_size == 100  # service over global
    assert "jwt" in documents
    admin = router.match("GET", "/api/v1/documents/admin").entry.plugins
    assert admin["acl"].allow == ["tenant_admin"]  # route over global
    assert admin["request-size-limiting"].allowed_payload_size == 100
    search = router.match("GET", "/api/v1/search").entry.plugins
    assert search["acl"].deny == ["guest"]  # top-level plugin scoped to the service
    assert "jwt" in search  # a disabled plugin does not shadow the global one (as in Kong)
    assert search["request-size-limiting"].allowed_payload_size == 1
    root = effective_plugins(CONFIG, "catchall", "root")
    assert root["acl"].allow == ["user"]
