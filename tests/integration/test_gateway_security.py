"""The security table: every route of the shipped kong.yml and every admin endpoint of the
gateway, times every kind of credential an attacker or a user brings, with the status each
must get. Upstreams are echo servers (so a 200 shows what reached the service, and for
which tenant); the gateway runs the shipped configuration with revocation, key-auth, rate
limits and quotas on, against real PostgreSQL and Redis."""
from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import jwt as pyjwt
import psycopg
import pytest

from gateway.app import build_apps
from gateway.config import load_config, with_targets, write_config
from gateway.settings import DEFAULT_CONFIG
from services.cli import admin
from services.common.auth import ensure_keypair, sign_token
from tests.conftest import create_tenant

from .test_gateway_support import GatewayServer, ServerThread, echo_app, free_port, gateway_settings
from .test_gateway_tokens import add_user

pytestmark = pytest.mark.integration

ROUTES = [  # (method, path, who may pass the acl)
    ("GET", "/api/v1/documents", {"user", "tenant_admin", "platform_admin"}),
    ("POST", "/api/v1/documents", {"user", "tenant_admin", "platform_admin"}),
    ("GET", "/api/v1/quota", {"user", "tenant_admin", "platform_admin"}),
    ("GET", "/api/v1/audit", {"tenant_admin", "platform_admin", "analyst"}),
    ("GET", "/api/v1/search?q=x", {"user", "tenant_admin", "platform_admin"}),
    ("POST", "/api/v1/predict", {"user", "tenant_admin", "platform_admin"}),
    ("GET", "/api/v1/models", {"platform_admin"}),
    ("GET", "/api/v1/datasets", {"tenant_admin", "platform_admin"}),
    ("POST", "/api/v1/training-jobs", {"tenant_admin", "platform_admin"}),
    ("GET", "/api/v1/admin/users", {"tenant_admin"}),
    ("GET", "/api/v1/admin/api-keys", {"tenant_admin"}),
    ("GET", "/api/v1/admin/tenants", {"platform_admin"}),
    ("GET", "/api/v1/admin/usage", {"tenant_admin", "platform_admin"}),
    ("GET", "/api/v1/tagging/queue", {"tenant_admin", "platform_admin"}),
    ("POST", f"/api/v1/tagging/documents/{uuid.UUID(int=1)}/retry", {"tenant_admin", "platform_admin"}),
    ("GET", f"/api/v1/storage-quotas/{uuid.UUID(int=1)}", {"platform_admin"}),
    ("PUT", f"/api/v1/storage-quotas/{uuid.UUID(int=1)}", {"platform_admin"}),
]
ROLES = ("user", "tenant_admin", "platform_admin", "analyst")


@dataclass
class World:
    gateway: GatewayServer
    tenant: str
    other: str
    tokens: dict[str, str]      # role -> token of a user with that role in `tenant`
    other_token: str            # a user of `other`
    revoked: str
    private: Path
    public: Path
    other_key: str              # an API key (role user) of `other`
    revoked_key: str


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, test_db_name: str, admin_dsn: str) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("security")
    private, public = ensure_keypair(tmp / "keys")
    upstreams = [ServerThread(echo_app(name), free_port()).start() for name in ("upload", "search", "model")]
    config = with_targets(load_config(DEFAULT_CONFIG), {
        "upload-upstream": [f"127.0.0.1:{upstreams[0].port}"],
        "search-upstream": [f"127.0.0.1:{upstreams[1].port}"],
        "model-serving-upstream": [f"127.0.0.1:{upstreams[2].port}"]})
    path = write_config(config, tmp / "kong.yml")
    settings = gateway_settings(tmp, path, db_name=test_db_name, key_dir=tmp / "keys",
                                gateway_redis_prefix=f"t-{uuid.uuid4().hex}", gateway_revocation_cache_seconds=0)
    apps = build_apps(settings, load_config(path))
    server = GatewayServer(apps, settings.http_port, settings.gateway_status_port).start()

    slug, other_slug = f"sa-{uuid.uuid4().hex[:6]}", f"sb-{uuid.uuid4().hex[:6]}"
    tenant, other = create_tenant(admin_dsn, slug), create_tenant(admin_dsn, other_slug)

    def token(tenant_id: str, tenant_slug: str, role: str, name: str) -> str:
        user_id = add_user(admin_dsn, tenant_id, name, "not-a-login", [role])
        return sign_token(private_key_file=private, user_id=user_id, tenant_id=tenant_id, tenant_slug=tenant_slug,
                          username=name, roles=[role], issuer="doctag", audience="doctag-api", ttl_seconds=600)

    tokens = {role: token(tenant, slug, role, f"{role}.a") for role in ROLES}
    revoked = token(tenant, slug, "tenant_admin", "revoked.a")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE identity.users SET token_generation = token_generation + 1 WHERE username = "
                     "'revoked.a' AND tenant_id = %s", (tenant,))
    other_key = admin.create_api_key(admin_dsn, other_slug, "batch", ["user"]).message.rsplit("\n", 1)[1]
    revoked_key = admin.create_api_key(admin_dsn, slug, "old", ["user"]).message.rsplit("\n", 1)[1]
    key_id = admin.list_api_keys(admin_dsn, slug)[0]["id"]
    admin.revoke_api_key(admin_dsn, slug, str(key_id))
    yield World(server, tenant, other, tokens, token(other, other_slug, "tenant_admin", "admin.b"), revoked,
                private, public, other_key, revoked_key)
    server.stop()
    for up in upstreams:
        up.stop()


def _forged(world: World) -> dict[str, dict[str, str]]:
    """Credentials that must never pass, by name."""
    now = int(time.time())
    claims = {"iss": "doctag", "aud": "doctag-api", "sub": str(uuid.uuid4()), "tenant": world.tenant,
              "tenant_slug": "x", "roles": ["platform_admin", "tenant_admin"], "name": "eve", "iat": now,
              "exp": now + 600, "gen": 0}
    other_private, _ = ensure_keypair(world.private.parent.parent / "eve-keys")
    expired = sign_token(private_key_file=world.private, user_id=str(uuid.uuid4()), tenant_id=world.tenant,
                         tenant_slug="x", username="eve", roles=["tenant_admin"], issuer="doctag",
                         audience="doctag-api", ttl_seconds=-120)
    hs_with_public_key = (f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(claims)}.")
    import hashlib
    import hmac
    signature = hmac.new(world.public.read_bytes(), hs_with_public_key[:-1].encode(), hashlib.sha256).digest()
    hs_with_public_key += base64.urlsafe_b64encode(signature).decode().rstrip("=")
    return {
        "no credential": {},
        "garbage": {"Authorization": "Bearer garbage"},
        "expired": {"Authorization": f"Bearer {expired}"},
        "wrong signature": {"Authorization": f"Bearer {pyjwt.encode(claims, other_private.read_text(), 'RS256')}"},
        "alg none": {"Authorization": f"Bearer {_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."},
        "HS256 with the public key": {"Authorization": f"Bearer {hs_with_public_key}"},
        "revoked token": {"Authorization": f"Bearer {world.revoked}"},
        "garbage API key": {"apikey": "dtk_not-a-key"},
        "revoked API key": {"apikey": world.revoked_key},
    }


def _call(client: httpx.Client, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    return client.request(method, path, headers=headers, content=b"{}" if method == "POST" else None)


@pytest.mark.parametrize(("method", "path", "allowed"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_every_route_against_every_credential(world: World, method: str, path: str, allowed: set[str]) -> None:
    admin_route = path.startswith("/api/v1/admin/")
    with httpx.Client(base_url=world.gateway.url, timeout=30, trust_env=False) as c:
        for name, headers in _forged(world).items():
            r = _call(c, method, path, headers)
            assert r.status_code == 401, (name, r.status_code, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["request_id"] == r.headers["x-request-id"]
        for role in ROLES:
            r = _call(c, method, path, {"Authorization": f"Bearer {world.tokens[role]}"})
            expected = 200 if role in allowed else 403
            assert r.status_code == expected, (role, r.status_code, r.text)
            if expected == 200 and not admin_route:
                seen = r.json()["headers"]
                assert seen["x-tenant-id"] == world.tenant and "apikey" not in seen
        # Another tenant's token: passes as that tenant, never as this one.
        r = _call(c, method, path, {"Authorization": f"Bearer {world.other_token}"})
        if "tenant_admin" in allowed:
            assert r.status_code == 200
            if not admin_route:
                assert r.json()["headers"]["x-tenant-id"] == world.other
        else:
            assert r.status_code == 403
        # Another tenant's API key (role user): as that tenant; admin endpoints take people's tokens only.
        r = _call(c, method, path, {"apikey": world.other_key})
        if admin_route:
            assert r.status_code == 401
        elif "user" in allowed:
            assert r.status_code == 200, r.text
            seen = r.json()["headers"]
            assert seen["x-tenant-id"] == world.other and "apikey" not in seen  # hide_credentials
            assert seen["authorization"].startswith("Bearer ")  # a token the service can verify
        else:
            assert r.status_code == 403


def test_admin_endpoints_act_on_the_callers_tenant_only(world: World) -> None:
    with httpx.Client(base_url=world.gateway.url, timeout=30, trust_env=False) as c:
        mine = {"Authorization": f"Bearer {world.tokens['tenant_admin']}"}
        theirs = {"Authorization": f"Bearer {world.other_token}"}
        users = c.get("/api/v1/admin/users", headers=mine).json()["items"]
        assert {u["username"] for u in users} >= {"user.a", "tenant_admin.a"}
        assert all(not u["username"].endswith(".b") for u in users)
        target = next(u["id"] for u in users if u["username"] == "user.a")
        r = c.patch(f"/api/v1/admin/users/{target}", headers=theirs, json={"disabled": True})
        assert r.status_code == 404  # another tenant's admin cannot see this user
        r = c.patch(f"/api/v1/admin/users/{target}", headers=mine, json={"role": "platform_admin"})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "role"
        r = c.patch("/api/v1/admin/users/not-a-uuid", headers=mine, json={"disabled": True})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "user_id"


def test_api_key_lifecycle_over_http(world: World) -> None:
    with httpx.Client(base_url=world.gateway.url, timeout=30, trust_env=False) as c:
        mine = {"Authorization": f"Bearer {world.tokens['tenant_admin']}"}
        created = c.post("/api/v1/admin/api-keys", headers=mine, json={"name": "야간 배치", "roles": ["user"]})
        assert created.status_code == 201 and created.headers["cache-control"] == "no-store"
        key = created.json()["key"]
        assert key.startswith("dtk_") and len(key) > 40
        listed = c.get("/api/v1/admin/api-keys", headers=mine).json()["items"]
        assert created.json()["id"] in {k["id"] for k in listed}
        assert key not in json.dumps(listed)  # shown once, never again
        r = c.get("/api/v1/search?q=x", headers={"apikey": key})
        assert r.status_code == 200 and r.json()["headers"]["x-tenant-id"] == world.tenant
        assert c.post("/api/v1/admin/api-keys", headers=mine, json={"name": ""}).json()["errors"][0]["field"] == "name"
        assert c.delete(f"/api/v1/admin/api-keys/{created.json()['id']}", headers=mine).status_code == 204
        assert c.get("/api/v1/search?q=x", headers={"apikey": key}).status_code == 401


def test_users_created_and_reset_over_http(world: World) -> None:
    with httpx.Client(base_url=world.gateway.url, timeout=30, trust_env=False) as c:
        mine = {"Authorization": f"Bearer {world.tokens['tenant_admin']}"}
        slug = c.get("/api/v1/admin/users", headers=mine)  # the tenant's slug comes from the DB below
        assert slug.status_code == 200
        r = c.post("/api/v1/admin/users", headers=mine,
                   json={"username": "new.user", "password": "첫-비밀번호-123", "role": "user"})
        assert r.status_code == 201, r.text
        assert c.post("/api/v1/admin/users", headers=mine,
                      json={"username": "new.user", "password": "첫-비밀번호-123"}).status_code == 409
        assert c.post("/api/v1/admin/users", headers=mine,
                      json={"username": "short", "password": "x"}).json()["errors"][0]["field"] == "password"
        user_id = r.json()["id"]
        with psycopg.connect(f"dbname={world.gateway.apps.gateway.settings.db_name} host=127.0.0.1 user=postgres") \
                as conn:
            tenant_slug = conn.execute("SELECT slug FROM identity.tenants WHERE id = %s", (world.tenant,)).fetchone()
        login = {"tenant": tenant_slug[0], "username": "new.user", "password": "첫-비밀번호-123"}
        token = c.post("/api/v1/auth/token", json=login).json()["access_token"]
        assert c.get("/api/v1/quota", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert c.patch(f"/api/v1/admin/users/{user_id}", headers=mine,
                       json={"password": "두번째-비밀번호-456"}).status_code == 200
        assert c.get("/api/v1/quota", headers={"Authorization": f"Bearer {token}"}).status_code == 401
        assert c.post("/api/v1/auth/token", json=login).status_code == 401
        platform = {"Authorization": f"Bearer {world.tokens['platform_admin']}"}
        tenants = c.get("/api/v1/admin/tenants", headers=platform).json()["items"]
        assert world.tenant in {t["id"] for t in tenants}
        r = c.patch(f"/api/v1/admin/tenants/{world.other}", headers=platform, json={"api_daily_quota": 5000})
        assert r.status_code == 200 and r.json()["api_daily_quota"] == 5000
        assert c.patch(f"/api/v1/admin/tenants/{world.other}", headers=platform,
                       json={"api_daily_quota": -5}).json()["errors"][0]["field"] == "api_daily_quota"


def test_usage_history_per_day_and_tenant(world: World) -> None:
    db = world.gateway.apps.gateway.settings.db_name
    today = datetime.now(ZoneInfo(world.gateway.apps.gateway.settings.api_quota_timezone)).date()
    with psycopg.connect(f"dbname={db} host=127.0.0.1 user=postgres") as conn:
        for tenant, back, calls in ((world.tenant, 3, 120), (world.tenant, 40, 999), (world.other, 2, 7)):
            conn.execute("INSERT INTO identity.api_usage (tenant_id, day, calls) VALUES (%s, %s, %s) "
                         "ON CONFLICT (tenant_id, day) DO UPDATE SET calls = excluded.calls",
                         (tenant, today - timedelta(days=back), calls))
    with httpx.Client(base_url=world.gateway.url, timeout=30, trust_env=False) as c:
        mine = {"Authorization": f"Bearer {world.tokens['tenant_admin']}"}
        body = c.get("/api/v1/admin/usage", headers=mine).json()
        assert body["tenant_id"] == world.tenant and len(body["days"]) == 30
        assert body["days"][-1]["day"] == today.isoformat()  # oldest first, ending today, every day present
        by_day = {d["day"]: d["calls"] for d in body["days"]}
        assert by_day[(today - timedelta(days=3)).isoformat()] == 120
        assert (today - timedelta(days=40)).isoformat() not in by_day  # outside the 30 days
        assert by_day[(today - timedelta(days=2)).isoformat()] == 0  # the other tenant's calls are not here
        assert body["daily_limit"] > 0
        assert len(c.get("/api/v1/admin/usage?days=45", headers=mine).json()["days"]) == 45
        # A tenant admin cannot read another tenant's usage; a platform admin can.
        r = c.get(f"/api/v1/admin/usage?tenant_id={world.other}", headers=mine)
        assert r.status_code == 403 and r.json()["errors"][0]["field"] == "tenant_id"
        platform = {"Authorization": f"Bearer {world.tokens['platform_admin']}"}
        theirs = c.get(f"/api/v1/admin/usage?tenant_id={world.other}", headers=platform).json()
        assert {d["day"]: d["calls"] for d in theirs["days"]}[(today - timedelta(days=2)).isoformat()] == 7
        for bad, field in (("days=0", "days"), ("days=9999", "days"), ("tenant_id=x", "tenant_id")):
            r = c.get(f"/api/v1/admin/usage?{bad}", headers=platform)
            assert r.status_code == 422 and r.json()["errors"][0]["field"] == field, r.text
        r = c.get(f"/api/v1/admin/usage?tenant_id={uuid.uuid4()}", headers=platform)
        assert r.status_code == 404
