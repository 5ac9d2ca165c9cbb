"""`POST /api/v1/auth/token` against the real PostgreSQL test database (RLS, role
doctag_gateway), with users inserted as the admin role."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from argon2 import PasswordHasher

from services.common.auth import decode_token
from services.common.passwords import hash_password, verify_password
from tests.conftest import create_tenant

from .test_gateway_support import (
    ServerThread,
    free_port,
    gateway_config_data,
    start_gateway,
)

pytestmark = pytest.mark.integration

PASSWORD = "비밀번호-correct horse 42"


def add_user(admin_dsn: str, tenant_id: str, username: str, password_hash: str, roles: list[str],
             disabled: bool = False) -> str:
    user_id = str(uuid.uuid4())
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO identity.users (id, tenant_id, username, password_hash, roles, disabled) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (user_id, tenant_id, username, password_hash, roles, disabled),
        )
    return user_id


@pytest.fixture(scope="module")
def identities(admin_dsn: str) -> dict[str, str]:
    slug = f"hr-{uuid.uuid4().hex[:8]}"
    tenant_id = create_tenant(admin_dsn, slug)
    other_slug = f"fin-{uuid.uuid4().hex[:8]}"
    other_tenant = create_tenant(admin_dsn, other_slug)
    good_hash = hash_password(PASSWORD)
    ids = {
        "slug": slug, "tenant_id": tenant_id, "other_slug": other_slug,
        "user_id": add_user(admin_dsn, tenant_id, "kim.minsu", good_hash, ["user", "tenant_admin"]),
        "disabled_id": add_user(admin_dsn, tenant_id, "lee.off", good_hash, ["user"], disabled=True),
        # Hashed with weaker parameters than the current ones: upgraded on the next login.
        "weak_id": add_user(admin_dsn, tenant_id, "park.old",
                            PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD), ["user"]),
    }
    # The same username in another tenant, with another password.
    add_user(admin_dsn, other_tenant, "kim.minsu", hash_password("other tenant's password"), ["user"])
    return ids


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, test_db_name: str, key_dir: Path) -> Iterator[ServerThread]:
    tmp = tmp_path_factory.mktemp("gw-tokens")
    data = gateway_config_data({"upload-upstream": [f"127.0.0.1:{free_port()}"],
                                "search-upstream": [f"127.0.0.1:{free_port()}"]})
    server = start_gateway(tmp, data, db_name=test_db_name, key_dir=key_dir)
    yield server
    server.stop()


@pytest.fixture()
def client(gateway: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as c:
        yield c


def test_correct_password_gives_verifiable_token(client: httpx.Client, identities: dict[str, str],
                                                 key_dir: Path) -> None:
    r = client.post("/api/v1/auth/token",
                    json={"tenant": identities["slug"], "username": "kim.minsu", "password": PASSWORD})
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    claims = decode_token(body["access_token"], public_key_file=key_dir / "jwt_public.pem", issuer="doctag",
                          audience="doctag-api")
    assert claims["tenant"] == identities["tenant_id"]
    assert claims["tenant_slug"] == identities["slug"]
    assert claims["sub"] == identities["user_id"]
    assert claims["name"] == "kim.minsu"
    assert sorted(claims["roles"]) == ["tenant_admin", "user"]
    assert claims["exp"] - claims["iat"] == 3600


def test_issued_token_passes_the_gateway_jwt_plugin(client: httpx.Client, identities: dict[str, str]) -> None:
    token = client.post("/api/v1/auth/token", json={"tenant": identities["slug"], "username": "kim.minsu",
                                                    "password": PASSWORD}).json()["access_token"]
    # Authenticated and allowed: the request reaches the (dead) upstream and fails there with 502, not 401/403.
    r = client.get("/api/v1/search", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 502


def test_wrong_password_unknown_user_unknown_tenant_disabled_user_identical_401(
        client: httpx.Client, identities: dict[str, str]) -> None:
    attempts = [
        {"tenant": identities["slug"], "username": "kim.minsu", "password": "wrong"},
        {"tenant": identities["slug"], "username": "nobody", "password": PASSWORD},
        {"tenant": "no-such-tenant", "username": "kim.minsu", "password": PASSWORD},
        {"tenant": identities["slug"], "username": "lee.off", "password": PASSWORD},
        # Right password of the same username, but in the other tenant.
        {"tenant": identities["other_slug"], "username": "kim.minsu", "password": PASSWORD},
    ]
    answers = []
    for attempt in attempts:
        r = client.post("/api/v1/auth/token", json=attempt)
        assert r.status_code == 401, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.headers["www-authenticate"].startswith("Bearer")
        body = r.json()
        answers.append({k: v for k, v in body.items() if k != "request_id"})
    assert all(a == answers[0] for a in answers)
    assert answers[0]["type"] == "urn:doctag:problem:invalid-credentials"


@pytest.mark.parametrize(("body", "field"), [
    ({"username": "kim.minsu", "password": "x"}, "tenant"),
    ({"tenant": "Bad Slug!", "username": "kim.minsu", "password": "x"}, "tenant"),
    ({"tenant": "hr", "username": "김민수", "password": "x"}, "username"),
    ({"tenant": "hr", "username": "kim", "password": ""}, "password"),
    ({"tenant": "hr", "username": "kim", "password": "x" * 1025}, "password"),
    ({"tenant": "hr", "username": "kim", "password": 12345}, "password"),
])
def test_bad_body_is_422_naming_the_field(client: httpx.Client, body: dict, field: str) -> None:
    r = client.post("/api/v1/auth/token", json=body)
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["type"] == "urn:doctag:problem:validation-error"
    assert field in [e["field"] for e in problem["errors"]]


def test_non_json_body_is_422(client: httpx.Client) -> None:
    for content in (b"tenant=hr&username=kim", b"[1, 2]", b""):
        r = client.post("/api/v1/auth/token", content=content, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "body"


def test_deeply_nested_body_is_422_and_the_connection_stays(client: httpx.Client) -> None:
    """Formerly a RecursionError: a 500 and a dropped keep-alive connection."""
    for content in (b"[" * 8000 + b"]" * 8000, b'{"tenant": ' + b"[" * 5000 + b"]" * 5000 + b"}"):
        r = client.post("/api/v1/auth/token", content=content, headers={"Content-Type": "application/json",
                                                                        "X-Request-ID": "nested-1"})
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "body" and r.json()["request_id"] == "nested-1"
    # The same connection answers the next request.
    assert client.post("/api/v1/auth/token", json={}).status_code == 422


def test_oversized_body_is_413(client: httpx.Client) -> None:
    r = client.post("/api/v1/auth/token", json={"tenant": "hr", "username": "kim", "password": "x" * 40_000})
    assert r.status_code == 413


def test_outdated_hash_is_upgraded_on_login(client: httpx.Client, identities: dict[str, str], admin_dsn: str) -> None:
    r = client.post("/api/v1/auth/token", json={"tenant": identities["slug"], "username": "park.old",
                                                "password": PASSWORD})
    assert r.status_code == 200, r.text
    with psycopg.connect(admin_dsn) as conn:
        stored = conn.execute("SELECT password_hash FROM identity.users WHERE id = %s",
                              (identities["weak_id"],)).fetchone()[0]
    assert "m=65536,t=3,p=4" in stored
    assert verify_password(stored, PASSWORD)


def test_logins_are_audited_without_secrets(client: httpx.Client, identities: dict[str, str],
                                            admin_dsn: str) -> None:
    rid = f"login-{uuid.uuid4()}"
    ok = client.post("/api/v1/auth/token", headers={"X-Request-ID": rid},
                     json={"tenant": identities["slug"], "username": "kim.minsu", "password": PASSWORD})
    token = ok.json()["access_token"]
    wrong = "wrong-" + uuid.uuid4().hex
    client.post("/api/v1/auth/token", json={"tenant": identities["slug"], "username": "kim.minsu",
                                            "password": wrong})
    ghost_slug = f"ghost-{uuid.uuid4().hex[:8]}"
    client.post("/api/v1/auth/token", json={"tenant": ghost_slug, "username": "kim.minsu", "password": wrong})
    with psycopg.connect(admin_dsn, row_factory=psycopg.rows.dict_row) as conn:
        rows = conn.execute(
            "SELECT * FROM documents.audit_log WHERE action = 'auth.login' AND "
            "(tenant_id = %s OR details->>'tenant_slug' = %s) ORDER BY id",
            (identities["tenant_id"], ghost_slug)).fetchall()
    success = next(r for r in rows if r["request_id"] == rid)
    assert (success["outcome"], str(success["actor_id"]), success["actor_name"]) == \
        ("success", identities["user_id"], "kim.minsu")
    assert str(success["tenant_id"]) == identities["tenant_id"]
    failure = next(r for r in rows if r["outcome"] == "failed" and r["details"]["reason"] == "wrong password")
    assert str(failure["actor_id"]) == identities["user_id"] and failure["actor_name"] == "kim.minsu"
    ghost = next(r for r in rows if r["details"].get("tenant_slug") == ghost_slug)
    assert ghost["tenant_id"] is None and ghost["actor_id"] is None and ghost["outcome"] == "failed"
    assert ghost["details"]["reason"] == "unknown tenant"
    everything = repr(rows)
    assert PASSWORD not in everything and wrong not in everything and token not in everything

