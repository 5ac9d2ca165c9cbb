"""Every change through the gateway's admin API lands in the changed tenant's audit log, read
back through the gateway from upload's audit API (`GET /api/v1/audit`): the real gateway (the
shipped kong.yml) in front of a real upload replica, both on the session's database as their
own roles (doctag_gateway may insert only these actions, migration 0019)."""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.app import build_apps
from gateway.config import load_config, with_targets, write_config
from gateway.settings import DEFAULT_CONFIG
from services.common.auth import sign_token
from services.upload.app import UploadComponents, build_http_app
from services.upload.settings import UploadSettings
from tests.conftest import create_tenant

from .test_gateway_support import GatewayServer, ServerThread, free_port, gateway_settings
from .test_gateway_tokens import add_user

pytestmark = pytest.mark.integration

PASSWORD = "첫-비밀번호-123"  # never in the log
NEW_PASSWORD = "두번째-비밀번호-456"


@dataclass
class Stack:
    client: httpx.Client
    tenant: str
    slug: str
    boss: dict[str, str]       # tenant_admin of `tenant`
    boss_id: str
    platform: dict[str, str]   # platform_admin of another tenant


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, test_db_name: str, admin_dsn: str, key_dir: Path,
          amqp_prefix: str) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("admin-audit")
    upload_settings = UploadSettings(db_name=test_db_name, amqp_prefix=amqp_prefix, blob_dir=tmp / "blobs",
                                     jwt_public_key_file=key_dir / "jwt_public.pem", relay_enabled=False,
                                     purge_enabled=False)
    upload = ServerThread(build_http_app(UploadComponents(upload_settings)), free_port(), lifespan="on").start()
    dead = f"127.0.0.1:{free_port()}"
    config = with_targets(load_config(DEFAULT_CONFIG), {"upload-upstream": [f"127.0.0.1:{upload.port}"],
                                                        "search-upstream": [dead], "model-serving-upstream": [dead]})
    path = write_config(config, tmp / "kong.yml")
    settings = gateway_settings(tmp, path, db_name=test_db_name, key_dir=key_dir,
                                gateway_redis_prefix=f"t-{uuid.uuid4().hex}", gateway_revocation_cache_seconds=0)
    gateway = GatewayServer(build_apps(settings, load_config(path)), settings.http_port,
                            settings.gateway_status_port).start()

    slug, other_slug = f"aa-{uuid.uuid4().hex[:6]}", f"ab-{uuid.uuid4().hex[:6]}"
    tenant, other = create_tenant(admin_dsn, slug), create_tenant(admin_dsn, other_slug)

    def bearer(tenant_id: str, tenant_slug: str, role: str, name: str) -> tuple[dict[str, str], str]:
        user_id = add_user(admin_dsn, tenant_id, name, "not-a-login", [role])
        token = sign_token(private_key_file=key_dir / "jwt_private.pem", user_id=user_id, tenant_id=tenant_id,
                           tenant_slug=tenant_slug, username=name, roles=[role], issuer="doctag",
                           audience="doctag-api", ttl_seconds=600)
        return {"Authorization": f"Bearer {token}"}, user_id

    boss, boss_id = bearer(tenant, slug, "tenant_admin", "boss.park")
    platform, _ = bearer(other, other_slug, "platform_admin", "ops.choi")
    with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as client:
        yield Stack(client, tenant, slug, boss, boss_id, platform)
    gateway.stop()
    upload.stop()


def entries(stack: Stack, **params: str) -> list[dict]:
    r = stack.client.get("/api/v1/audit", headers=stack.boss, params={"limit": "200", **params})
    assert r.status_code == 200, r.text
    return r.json()["items"]


def admin_entries(stack: Stack) -> list[dict]:
    """The tenant's admin.* entries, oldest first."""
    return [e for e in reversed(entries(stack)) if e["action"].startswith("admin.")]


def test_each_admin_change_is_in_the_tenants_audit_log(stack: Stack) -> None:
    c, boss = stack.client, stack.boss
    rid = {"X-Request-ID": "admin-create-1"}
    created = c.post("/api/v1/admin/users", headers={**boss, **rid},
                     json={"username": "new.kim", "password": PASSWORD, "role": "user"})
    assert created.status_code == 201, created.text
    user_id = created.json()["id"]
    assert c.patch(f"/api/v1/admin/users/{user_id}", headers=boss, json={"role": "tenant_admin"}).status_code == 200
    assert c.patch(f"/api/v1/admin/users/{user_id}", headers=boss, json={"disabled": True}).status_code == 200
    assert c.patch(f"/api/v1/admin/users/{user_id}", headers=boss, json={"disabled": False}).status_code == 200
    assert c.patch(f"/api/v1/admin/users/{user_id}", headers=boss, json={"password": NEW_PASSWORD}).status_code == 200
    key = c.post("/api/v1/admin/api-keys", headers=boss, json={"name": "야간 배치", "roles": ["user"]})
    assert key.status_code == 201
    key_id, secret = key.json()["id"], key.json()["key"]
    assert c.delete(f"/api/v1/admin/api-keys/{key_id}", headers=boss).status_code == 204
    assert c.delete(f"/api/v1/admin/api-keys/{key_id}", headers=boss).status_code == 204  # changes nothing
    quota = c.patch(f"/api/v1/admin/tenants/{stack.tenant}", headers=stack.platform, json={"api_daily_quota": 5000})
    assert quota.status_code == 200

    got = admin_entries(stack)
    assert [e["action"] for e in got] == [
        "admin.user_created", "admin.user_role_changed", "admin.user_disabled", "admin.user_enabled",
        "admin.user_password_reset", "admin.api_key_created", "admin.api_key_revoked", "admin.tenant_quota_changed"]
    assert {e["tenant_id"] for e in got} == {stack.tenant} and {e["outcome"] for e in got} == {"success"}
    by_boss = got[:-1]
    assert {(e["actor"]["id"], e["actor"]["username"]) for e in by_boss} == {(stack.boss_id, "boss.park")}
    user_target = {"type": "user", "id": user_id, "username": "new.kim"}
    assert all(e["details"]["target"] == user_target for e in got[:5])
    assert got[0]["request_id"] == "admin-create-1" and got[0]["details"]["roles"] == ["user"]
    assert got[1]["details"]["roles_before"] == ["user"] and got[1]["details"]["roles"] == ["tenant_admin"]
    assert got[2]["details"]["was_disabled"] is False and got[3]["details"]["was_disabled"] is True
    assert got[5]["details"]["target"] == {"type": "api_key", "id": key_id, "name": "야간 배치"}
    assert got[6]["details"]["target"]["id"] == key_id
    # The platform admin's change is in the changed tenant's log, naming the admin and their own tenant.
    quota_entry = got[7]
    assert quota_entry["actor"]["username"] == "ops.choi" and quota_entry["details"]["actor_tenant_id"] != stack.tenant
    assert quota_entry["details"]["target"] == {"type": "tenant", "id": stack.tenant, "slug": stack.slug}
    assert (quota_entry["details"]["api_daily_quota_before"], quota_entry["details"]["api_daily_quota"]) == \
        (None, 5000)
    # No secret is kept: neither password nor the API key nor its hash.
    dumped = json.dumps(got, ensure_ascii=False)
    assert PASSWORD not in dumped and NEW_PASSWORD not in dumped and secret not in dumped
    assert "password_hash" not in dumped and "key_hash" not in dumped
    # The audit API's own filter knows the new actions.
    assert [e["action"] for e in entries(stack, action="admin.user_disabled")] == ["admin.user_disabled"]


def test_refused_admin_changes_leave_no_entry(stack: Stack) -> None:
    c, boss = stack.client, stack.boss
    before = len(admin_entries(stack))
    assert c.post("/api/v1/admin/users", headers=boss,
                  json={"username": "dup.lee", "password": PASSWORD}).status_code == 201
    assert c.post("/api/v1/admin/users", headers=boss,
                  json={"username": "dup.lee", "password": PASSWORD}).status_code == 409
    assert c.patch(f"/api/v1/admin/users/{uuid.uuid4()}", headers=boss, json={"disabled": True}).status_code == 404
    assert c.delete(f"/api/v1/admin/api-keys/{uuid.uuid4()}", headers=boss).status_code == 404
    assert c.patch(f"/api/v1/admin/tenants/{uuid.uuid4()}", headers=stack.platform,
                   json={"api_daily_quota": 1}).status_code == 404
    assert c.patch(f"/api/v1/admin/tenants/{stack.tenant}", headers=boss,
                   json={"api_daily_quota": 1}).status_code == 403  # not a platform admin
    after = admin_entries(stack)
    assert [e["action"] for e in after[before:]] == ["admin.user_created"]
