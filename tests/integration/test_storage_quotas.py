"""Platform administrators set a tenant's storage quota through upload's real HTTP API against
real PostgreSQL: who may, what is refused and why, the audit entry, and an upload over the new
quota refused."""
from __future__ import annotations

import uuid

import psycopg
import pytest

from tests.conftest import create_tenant

from .test_upload import auth, running, upload

pytestmark = pytest.mark.integration

MB = 1024 * 1024


def _field(response) -> str:  # type: ignore[no-untyped-def]
    assert response.headers["content-type"] == "application/problem+json", response.text
    return str(response.json()["errors"][0]["field"])


async def test_platform_admin_sets_a_storage_quota_and_uploads_obey_it(upload_settings, admin_dsn,
                                                                         make_token) -> None:
    tenant = create_tenant(admin_dsn, f"sq-{uuid.uuid4().hex[:8]}", quota_bytes=10 * MB)
    home = create_tenant(admin_dsn, f"sh-{uuid.uuid4().hex[:8]}")
    member = make_token(tenant, username="직원")
    chief = make_token(tenant, roles=("tenant_admin",), username="chief")
    platform = make_token(home, roles=("platform_admin",), username="root")
    path = f"/api/v1/storage-quotas/{tenant}"
    async with running(upload_settings) as (client, _stub, _components):
        first = await upload(client, member, "예산.txt", ("가" * 3000).encode(), title="예산")  # 9,000 bytes of UTF-8
        assert first.status_code == 202, first.text
        used = first.json()["quota"]["used_bytes"]

        # Only a platform_admin, even for its own tenant; the refusal is audited in the caller's tenant.
        for token in (member, chief):
            r = await client.get(path, headers=auth(token))
            assert r.status_code == 403, r.text
            r = await client.put(path, headers=auth(token), json={"quota_bytes": 20 * MB})
            assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"

        got = await client.get(path, headers=auth(platform))
        assert got.status_code == 200, got.text
        assert got.json() == {"tenant_id": tenant, "quota_bytes": 10 * MB, "used_bytes": used,
                              "available_bytes": 10 * MB - used}

        # Validation names the field.
        for bad in ("10", 1.5, True, None, 0, -1, 2**50 + 1):
            r = await client.put(path, headers=auth(platform), json={"quota_bytes": bad})
            assert r.status_code == 422 and _field(r) == "quota_bytes", (bad, r.text)
        r = await client.put(path, headers=auth(platform), json=["quota_bytes"])
        assert r.status_code == 422 and _field(r) == "quota_bytes"
        r = await client.put("/api/v1/storage-quotas/not-a-uuid", headers=auth(platform), json={"quota_bytes": MB})
        assert r.status_code == 422 and _field(r) == "tenant_id"
        r = await client.put(f"/api/v1/storage-quotas/{uuid.uuid4()}", headers=auth(platform),
                             json={"quota_bytes": MB})
        assert r.status_code == 404 and _field(r) == "tenant_id"
        # Below what the tenant already stores: refused, with the usage to decide on.
        r = await client.put(path, headers=auth(platform), json={"quota_bytes": used - 1})
        assert r.status_code == 409 and _field(r) == "quota_bytes" and r.json()["used_bytes"] == used

        # Exactly the usage plus 1,000 bytes: accepted and audited in the changed tenant's log.
        r = await client.put(path, headers=auth(platform), json={"quota_bytes": used + 1000})
        assert r.status_code == 200, r.text
        assert r.json() == {"tenant_id": tenant, "quota_bytes": used + 1000, "used_bytes": used,
                            "available_bytes": 1000}
        quota = (await client.get("/api/v1/quota", headers=auth(member))).json()
        assert quota["quota_bytes"] == used + 1000

        # The next upload that does not fit is refused; one that fits passes.
        r = await upload(client, member, "큰 문서.txt", ("나" * 400).encode(), title="큰 문서")  # 1,200 bytes
        assert r.status_code == 507, r.text
        r = await upload(client, member, "작은 문서.txt", ("다" * 300).encode(), title="작은 문서")  # 900 bytes
        assert r.status_code == 202, r.text

    with psycopg.connect(admin_dsn) as conn:
        rows = conn.execute(
            "SELECT tenant_id::text, actor_name, outcome, details FROM documents.audit_log "
            "WHERE action = 'admin.storage_quota_changed' AND tenant_id = ANY(%s) ORDER BY id",
            ([tenant, home],)).fetchall()
    changed = [r for r in rows if r[2] == "success"]
    assert len(changed) == 1
    tenant_id, actor, _, details = changed[0]
    assert tenant_id == tenant and actor == "root"
    assert details["quota_bytes_before"] == 10 * MB and details["quota_bytes"] == used + 1000
    assert details["used_bytes"] == used and details["actor_tenant_id"] == home
    assert details["target"] == {"type": "tenant", "id": tenant}
    denied = [r for r in rows if r[2] == "denied"]
    assert len(denied) == 4 and {r[0] for r in denied} == {tenant}
