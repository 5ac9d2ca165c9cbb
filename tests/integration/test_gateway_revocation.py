"""Revocation and key rotation through a running gateway: a password change, a role change
or disabling the user ends the user's tokens; a rotated signing key needs no restart and
tokens signed before it stay valid."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from services.cli import admin
from services.common.auth import ensure_keypair, rotate_keypair
from services.common.passwords import hash_password
from tests.conftest import create_tenant

from .test_gateway_support import GatewayServer, ServerThread, echo_app, free_port, gateway_config_data, start_gateway
from .test_gateway_tokens import add_user

pytestmark = pytest.mark.integration
PASSWORD = "처음-비밀번호-1"


@pytest.fixture()
def setup(tmp_path: Path, test_db_name: str, admin_dsn: str) -> Iterator[tuple[GatewayServer, str, Path]]:
    keys = tmp_path / "keys"
    ensure_keypair(keys)  # its own keys: this test rotates them
    slug = f"rv-{uuid.uuid4().hex[:8]}"
    tenant = create_tenant(admin_dsn, slug)
    add_user(admin_dsn, tenant, "kim.minsu", hash_password(PASSWORD), ["user"])
    upstream = ServerThread(echo_app("se"), free_port()).start()
    data = gateway_config_data({"upload-upstream": [f"127.0.0.1:{free_port()}"],
                                "search-upstream": [f"127.0.0.1:{upstream.port}"]})
    server = start_gateway(tmp_path, data, db_name=test_db_name, key_dir=keys, gateway_token_revocation=True,
                           gateway_revocation_cache_seconds=0, gateway_redis_prefix=f"t-{uuid.uuid4().hex}")
    yield server, slug, keys
    server.stop()
    upstream.stop()


def _login(c: httpx.Client, slug: str, password: str = PASSWORD) -> dict[str, str]:
    r = c.post("/api/v1/auth/token", json={"tenant": slug, "username": "kim.minsu", "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _search(c: httpx.Client, auth: dict[str, str]) -> httpx.Response:
    return c.get("/api/v1/search", headers=auth)


def test_password_role_and_disable_revoke_tokens(setup: tuple[GatewayServer, str, Path], admin_dsn: str) -> None:
    server, slug, _ = setup
    with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as c:
        auth = _login(c, slug)
        assert _search(c, auth).status_code == 200
        admin.set_password(admin_dsn, slug, "kim.minsu", "새-비밀번호-22")
        r = _search(c, auth)
        assert r.status_code == 401 and r.json()["type"] == "urn:doctag:problem:token-revoked"
        auth = _login(c, slug, "새-비밀번호-22")
        assert _search(c, auth).status_code == 200
        admin.set_role(admin_dsn, slug, "kim.minsu", "tenant_admin")
        assert _search(c, auth).status_code == 401
        auth = _login(c, slug, "새-비밀번호-22")
        assert _search(c, auth).status_code == 200
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute("UPDATE identity.users SET disabled = true WHERE username = 'kim.minsu' AND tenant_id = "
                         "(SELECT id FROM identity.tenants WHERE slug = %s)", (slug,))
        assert _search(c, auth).status_code == 401


def test_rotation_without_restart(setup: tuple[GatewayServer, str, Path]) -> None:
    server, slug, keys = setup
    with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as c:
        old = _login(c, slug)
        rotate_keypair(keys)
        new = _login(c, slug)  # signed with the new key
        assert old != new
        assert _search(c, old).status_code == 200
        assert _search(c, new).status_code == 200
        for _ in range(3):
            rotate_keypair(keys)
        assert _search(c, old).status_code == 401  # its key left the bundle
