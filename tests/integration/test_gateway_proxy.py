"""The gateway proxying to real upstream servers on loopback: balancing, passive health,
safe retries, streaming, size limits, correlation ids, JWT and ACL.

Upstreams are small echo apps (tests/integration/test_gateway_support.py); one
target port has nothing listening. The gateway runs in-process on a free port, with
the real PostgreSQL test database behind its token endpoint and readiness check.
"""
from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from services.common.auth import ensure_keypair, sign_token
from tests.conftest import create_tenant

from .test_gateway_support import (
    GatewayServer,
    ServerThread,
    echo_app,
    free_port,
    gateway_config_data,
    start_gateway,
)

pytestmark = pytest.mark.integration

MB = 1024 * 1024
TENANT = str(uuid.uuid4())


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, ServerThread]]:
    servers = {name: ServerThread(echo_app(name), free_port()).start() for name in ("up-a", "up-b", "se-a", "se-b")}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture()
def dead() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there


@pytest.fixture()
def gateway(tmp_path: Path, upstreams: dict[str, ServerThread], dead: str, test_db_name: str,
            key_dir: Path) -> Iterator[GatewayServer]:
    """upload-upstream: the dead target first, then two live ones; search-upstream: two live."""
    targets = {
        "upload-upstream": [dead, f"127.0.0.1:{upstreams['up-a'].port}", f"127.0.0.1:{upstreams['up-b'].port}"],
        "search-upstream": [f"127.0.0.1:{upstreams['se-a'].port}", f"127.0.0.1:{upstreams['se-b'].port}"],
    }
    server = start_gateway(tmp_path, gateway_config_data(targets), db_name=test_db_name, key_dir=key_dir)
    yield server
    server.stop()


@pytest.fixture()
def client(gateway: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=60, trust_env=False) as c:
        yield c


@pytest.fixture()
def status(gateway: GatewayServer) -> Iterator[httpx.Client]:
    """The gateway's status listener."""
    with httpx.Client(base_url=gateway.status.url, timeout=60, trust_env=False) as c:
        yield c


@pytest.fixture()
def auth(make_token) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"Authorization": f"Bearer {make_token(TENANT, roles=('user',), username='kim.minsu')}"}


def chunks(total: int, size: int = 256 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b"\xea\xb0\x80" * (n // 3) + b"a" * (n % 3)  # "가" in UTF-8


def assert_problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def metric_value(client: httpx.Client, name: str, **labels: str) -> float | None:
    text = client.get("/metrics").text
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


# ----------------------------------------------------------------- balancing and health

def test_post_retried_past_dead_target_then_balanced(client: httpx.Client, status: httpx.Client, auth: dict[str, str],
                                                    dead: str) -> None:
    # The first request goes to the dead target first: the connection is refused before
    # anything was sent, so even a POST with a streamed body is safely sent to the next.
    r = client.post("/api/v1/documents", content=chunks(3 * MB), headers=auth)
    assert r.status_code == 200, r.text
    echoed = r.json()
    assert echoed["upstream"] == "up-a"
    assert echoed["method"] == "POST"
    assert echoed["body_bytes"] == 3 * MB
    assert "content-length" not in echoed["headers"]  # streamed through chunked

    assert metric_value(status, "doctag_gateway_upstream_target_healthy", target=dead) == 0.0
    assert metric_value(status, "doctag_gateway_upstream_target_failures_total", target=dead, kind="tcp") == 1.0

    seen = Counter(client.get("/api/v1/documents", headers=auth).json()["upstream"] for _ in range(10))
    assert seen == {"up-a": 5, "up-b": 5}


def test_search_balanced_round_robin(client: httpx.Client, auth: dict[str, str]) -> None:
    order = [client.get("/api/v1/search", params={"q": "예산"}, headers=auth).json()["upstream"] for _ in range(6)]
    assert order in (["se-a", "se-b"] * 3, ["se-b", "se-a"] * 3)


def test_all_targets_dead_is_502(tmp_path: Path, test_db_name: str, key_dir: Path, auth: dict[str, str]) -> None:
    targets = {"upload-upstream": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"],
               "search-upstream": [f"127.0.0.1:{free_port()}"]}
    server = start_gateway(tmp_path, gateway_config_data(targets), db_name=test_db_name, key_dir=key_dir)
    try:
        with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as c:
            for _ in range(2):  # the second time all are already marked unhealthy: still tried, still 502
                body = assert_problem(c.post("/api/v1/documents", content=b"x" * 1000, headers=auth), 502)
                assert body["type"] == "urn:doctag:problem:bad-gateway"
                assert "upload" in body["detail"]
            assert_problem(c.get("/api/v1/search", headers=auth), 502)
    finally:
        server.stop()


def test_upstream_read_timeout_is_504(client: httpx.Client, auth: dict[str, str]) -> None:
    # read_timeout of the upload service is 1.5 s in the test config.
    body = assert_problem(client.get("/api/v1/documents/slow", params={"s": "4"}, headers=auth), 504)
    assert body["type"] == "urn:doctag:problem:gateway-timeout"


# ----------------------------------------------------------------- headers and correlation id

def test_request_id_kept_passed_upstream_and_echoed(client: httpx.Client, auth: dict[str, str]) -> None:
    r = client.get("/api/v1/search", headers={**auth, "X-Request-ID": "client-req-42"})
    assert r.status_code == 200
    assert r.json()["headers"]["x-request-id"] == "client-req-42"
    assert r.headers.get_list("x-request-id") == ["client-req-42"]  # upstream's own id not leaked


def test_invalid_request_id_replaced(client: httpx.Client, auth: dict[str, str]) -> None:
    r = client.get("/api/v1/search", headers={**auth, "X-Request-ID": "bad id\twith spaces"})
    generated = r.headers["x-request-id"]
    assert str(uuid.UUID(generated)) == generated
    assert r.json()["headers"]["x-request-id"] == generated
    problem = assert_problem(client.get("/api/v1/nowhere", headers=auth), 404)
    assert str(uuid.UUID(problem["request_id"])) == problem["request_id"]


def test_headers_forwarded_filtered_and_added(client: httpx.Client, auth: dict[str, str]) -> None:
    r = client.get(
        "/api/v1/search?q=%ED%95%9C%EA%B8%80&tag=a&tag=b",
        headers={**auth, "Connection": "keep-alive, X-Hop", "X-Hop": "secret", "X-Tenant-ID": "spoofed",
                 "X-Consumer-Username": "spoofed", "X-Forwarded-For": "10.1.2.3", "X-Custom": "kept"},
    )
    assert r.status_code == 200
    echoed = r.json()
    headers = echoed["headers"]
    assert echoed["raw_path"] == "/api/v1/search"
    assert echoed["query"] == "q=%ED%95%9C%EA%B8%80&tag=a&tag=b"
    assert headers["authorization"] == auth["Authorization"]  # services verify it again
    assert headers["x-tenant-id"] == TENANT
    assert headers["x-consumer-username"] == "kim.minsu"
    assert headers["x-consumer-groups"] == "user"
    assert headers["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "127.0.0.1"
    assert headers["x-custom"] == "kept"
    assert "x-hop" not in headers
    # Multiple Set-Cookie headers survive the trip back; hop-by-hop ones do not.
    assert r.headers.get_list("set-cookie") == ["a=1", "b=2"]


def test_non_ascii_path_is_forwarded_encoded(client: httpx.Client, auth: dict[str, str]) -> None:
    """A Korean path segment (a tag name) reaches the service as sent, and X-Forwarded-Path stays ASCII."""
    r = client.get("/api/v1/search/%ED%83%9C%EA%B7%B8", headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["raw_path"] == "/api/v1/search/%ED%83%9C%EA%B7%B8"
    assert r.json()["headers"]["x-forwarded-path"] == "/api/v1/search/%ED%83%9C%EA%B7%B8"


def test_strip_path_route(client: httpx.Client, make_token) -> None:  # type: ignore[no-untyped-def]
    admin = {"Authorization": f"Bearer {make_token(TENANT, roles=('tenant_admin',))}"}
    r = client.get("/api/v1/documents/admin/stats", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "/stats"
    assert r.json()["headers"]["x-forwarded-prefix"] == "/api/v1/documents/admin"


# ----------------------------------------------------------------- routing errors

def test_no_route_404_and_wrong_method_405(client: httpx.Client, auth: dict[str, str]) -> None:
    assert_problem(client.get("/api/v1/searchx", headers=auth), 404)
    assert_problem(client.get("/elsewhere"), 404)
    body = assert_problem(client.post("/api/v1/search", json={}, headers=auth), 405)
    assert body["type"] == "urn:doctag:problem:method-not-allowed"
    r = client.request("PATCH", "/api/v1/search", headers=auth)
    assert_problem(r, 405)
    assert r.headers["allow"] == "GET"


def test_paths_beside_the_gateways_own_endpoints_are_still_proxied(client: httpx.Client,
                                                                  auth: dict[str, str]) -> None:
    """The catch-all is matched first for every path outside the gateway's own endpoints; a path
    under one of their prefixes that none of them serves still reaches the proxy (its 404 is the
    proxy's "no route", not FastAPI's), and the own endpoints keep answering."""
    for path in ("/api/v1/admin/usersx", "/api/v1/admin/users/x/y", "/api/v1/auth/tokens"):
        assert "no route matches" in assert_problem(client.get(path, headers=auth), 404)["detail"]
    assert client.post("/api/v1/auth/token", json={}).status_code == 422  # the token endpoint itself
    assert assert_problem(client.request("TRACE", "/api/v1/search", headers=auth), 405)


def test_dot_segments_rejected(client: httpx.Client, auth: dict[str, str]) -> None:
    r = client.get("/api/v1/documents/%2E%2E/other", headers=auth)
    assert_problem(r, 400)


# ----------------------------------------------------------------- streaming and size limits

def test_50mb_upload_streams_through_with_and_without_length(client: httpx.Client, auth: dict[str, str]) -> None:
    size = 50 * MB
    r = client.post("/api/v1/documents", content=chunks(size), headers={**auth, "Content-Length": str(size)})
    assert r.status_code == 200, r.text
    assert r.json()["body_bytes"] == size
    assert r.json()["headers"]["content-length"] == str(size)
    r = client.post("/api/v1/documents", content=chunks(size), headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["body_bytes"] == size


def test_large_download_streams_back(client: httpx.Client, auth: dict[str, str]) -> None:
    with client.stream("GET", "/api/v1/documents/download", params={"mb": "40"}, headers=auth) as r:
        assert r.status_code == 200
        assert r.headers["content-length"] == str(40 * MB)
        assert sum(len(c) for c in r.iter_raw()) == 40 * MB


def test_over_limit_with_content_length_is_413_early(client: httpx.Client, auth: dict[str, str]) -> None:
    size = 61 * MB  # the test limit on the documents route is 60 MiB
    r = client.post("/api/v1/documents", content=chunks(size), headers={**auth, "Content-Length": str(size)})
    body = assert_problem(r, 413)
    assert body["max_bytes"] == 60 * MB


def test_over_limit_chunked_is_413_while_streaming(client: httpx.Client, auth: dict[str, str]) -> None:
    r = client.post("/api/v1/documents", content=chunks(70 * MB), headers=auth)
    body = assert_problem(r, 413)
    assert body["type"] == "urn:doctag:problem:payload-too-large"
    # The gateway still works afterwards.
    assert client.get("/api/v1/documents", headers=auth).status_code == 200


def test_global_limit_applies_to_other_routes(client: httpx.Client, auth: dict[str, str]) -> None:
    # The search route has no limit of its own: the global 1 MiB applies (and GET has no body).
    r = client.request("GET", "/api/v1/search", content=b"x" * (2 * MB), headers=auth)
    assert_problem(r, 413)


# ----------------------------------------------------------------- JWT and ACL

def test_missing_token_is_401(client: httpx.Client) -> None:
    r = client.get("/api/v1/search")
    body = assert_problem(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert body["errors"][0]["field"] == "Authorization"


def test_forged_token_is_401(client: httpx.Client, tmp_path: Path) -> None:
    other_private, _ = ensure_keypair(tmp_path / "other-keys")
    forged = sign_token(private_key_file=other_private, user_id=str(uuid.uuid4()), tenant_id=TENANT,
                        tenant_slug="t", username="mallory", roles=["platform_admin"], issuer="doctag",
                        audience="doctag-api", ttl_seconds=600)
    r = client.get("/api/v1/search", headers={"Authorization": f"Bearer {forged}"})
    assert_problem(r, 401)
    assert "invalid_token" in r.headers["www-authenticate"]
    assert_problem(client.get("/api/v1/search", headers={"Authorization": "Bearer not.a.jwt"}), 401)


def test_expired_token_is_401(client: httpx.Client, make_token) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/api/v1/search", headers={"Authorization": f"Bearer {make_token(TENANT, ttl=-60)}"})
    body = assert_problem(r, 401)
    assert body["type"] == "urn:doctag:problem:token-expired"


def test_wrong_audience_or_issuer_is_401(client: httpx.Client, key_dir: Path) -> None:
    common = dict(private_key_file=key_dir / "jwt_private.pem", user_id=str(uuid.uuid4()), tenant_id=TENANT,
                  tenant_slug="t", username="u", roles=["user"], ttl_seconds=600)
    wrong_aud = sign_token(issuer="doctag", audience="someone-else", **common)
    assert_problem(client.get("/api/v1/search", headers={"Authorization": f"Bearer {wrong_aud}"}), 401)
    unknown_iss = sign_token(issuer="not-doctag", audience="doctag-api", **common)
    assert_problem(client.get("/api/v1/search", headers={"Authorization": f"Bearer {unknown_iss}"}), 401)


def test_role_not_allowed_is_403(client: httpx.Client, make_token) -> None:  # type: ignore[no-untyped-def]
    # Global ACL allows user/tenant_admin only.
    platform_only = {"Authorization": f"Bearer {make_token(TENANT, roles=('platform_admin',))}"}
    body = assert_problem(client.get("/api/v1/search", headers=platform_only), 403)
    assert body["type"] == "urn:doctag:problem:forbidden"
    # The admin route's own ACL (route scope wins over global) needs tenant_admin.
    user = {"Authorization": f"Bearer {make_token(TENANT, roles=('user',))}"}
    assert_problem(client.get("/api/v1/documents/admin/stats", headers=user), 403)


def test_refused_roles_are_recorded_in_the_audit_log(client: httpx.Client, make_token,  # type: ignore[no-untyped-def]
                                                     admin_dsn: str) -> None:
    """A 403 from the gateway's acl is an `access.denied` entry of the caller's department."""
    tenant = create_tenant(admin_dsn, f"acl-{uuid.uuid4().hex[:6]}")
    user_id = str(uuid.uuid4())
    headers = {"Authorization": f"Bearer {make_token(tenant, roles=('user',), user_id=user_id, username='lee')}",
               "X-Request-ID": "acl-denied-1"}
    assert_problem(client.get("/api/v1/documents/admin/stats", headers=headers), 403)
    with psycopg.connect(admin_dsn) as conn:
        rows = conn.execute("SELECT actor_id, actor_name, outcome, request_id, details FROM documents.audit_log "
                            "WHERE tenant_id = %s AND action = 'access.denied'", (tenant,)).fetchall()
    assert len(rows) == 1
    actor_id, actor_name, outcome, request_id, details = rows[0]
    assert (str(actor_id), actor_name, outcome, request_id) == (user_id, "lee", "denied", "acl-denied-1")
    assert details["path"] == "/api/v1/documents/admin/stats" and details["roles"] == ["user"]


def test_operational_endpoints_on_the_status_port_only(client: httpx.Client, status: httpx.Client,
                                                       gateway: GatewayServer, auth: dict[str, str]) -> None:
    assert status.get("/healthz").json()["status"] == "ok"
    ready = status.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "config": "ok"}
    client.get("/api/v1/search", headers=auth)
    client.get("/api/v1/search")  # 401 from the gateway itself
    assert (metric_value(status, "doctag_gateway_requests_total", route="search", service="search",
                         status="200") or 0) >= 1
    # Kong's names (prometheus plugin).
    assert (metric_value(status, "kong_http_requests_total", service="search", route="search", code="200",
                         source="service") or 0) >= 1
    assert (metric_value(status, "kong_http_requests_total", service="search", route="search", code="401",
                         source="kong") or 0) >= 1
    for name in ("kong_request_latency_ms_count", "kong_upstream_latency_ms_count", "kong_kong_latency_ms_count"):
        assert (metric_value(status, name, service="search", route="search") or 0) >= 1, name
    assert (metric_value(status, "kong_bandwidth_bytes", service="search", direction="egress") or 0) > 0
    se_a = f"127.0.0.1:{gateway.apps.gateway.proxy.balancers['search-upstream'].targets[0].port}"
    assert metric_value(status, "kong_upstream_target_health", upstream="search-upstream", target=se_a,
                        state="healthy") == 1.0


def test_root_route_proxies_every_path_even_operational_ones(tmp_path: Path, test_db_name: str, key_dir: Path,
                                                             upstreams: dict[str, ServerThread],
                                                             auth: dict[str, str]) -> None:
    data = gateway_config_data({"upload-upstream": [f"127.0.0.1:{upstreams['up-a'].port}"],
                                "search-upstream": [f"127.0.0.1:{upstreams['se-a'].port}"]})
    data["services"][1]["routes"].append({"name": "everything", "paths": ["/"], "strip_path": False})
    server = start_gateway(tmp_path, data, db_name=test_db_name, key_dir=key_dir)
    try:
        with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as c:
            for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/anything/else"):
                r = c.get(path, headers=auth)
                assert r.status_code == 200, (path, r.text)
                assert (r.json()["upstream"], r.json()["path"]) == ("se-a", path)
        assert httpx.get(f"{server.status.url}/readyz", timeout=10).status_code == 200
    finally:
        server.stop()


def test_security_headers_on_proxied_and_gateway_answers(client: httpx.Client, auth: dict[str, str]) -> None:
    for r in (client.get("/api/v1/search", headers=auth), client.get("/api/v1/search"),
              client.get("/nowhere", headers=auth), client.post("/api/v1/auth/token", json={})):
        assert r.headers["x-content-type-options"] == "nosniff", r.request.url
        assert r.headers.get_list("cache-control") == ["no-store"], r.request.url
