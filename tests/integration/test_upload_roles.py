"""Upload refuses an analyst's writes itself (defence in depth behind the gateway's acl):
called directly, not through the gateway, every write answers 403 problem+json naming the role,
and nothing changes."""
from __future__ import annotations

import uuid

import pytest

from services.upload.settings import UploadSettings
from tests.conftest import create_tenant

from .test_upload import KOREAN_TEXT, auth, running, upload

pytestmark = pytest.mark.integration


async def test_analyst_cannot_write_through_upload_itself(upload_settings: UploadSettings, make_token,
                                                          admin_dsn: str) -> None:
    tenant = create_tenant(admin_dsn, f"an-{uuid.uuid4().hex[:8]}")
    user = make_token(tenant)
    analyst = make_token(tenant, roles=("analyst",), username="분석가")
    async with running(upload_settings) as (client, _stub, _components):
        doc = (await upload(client, user, "보고서.txt", KOREAN_TEXT.encode())).json()
        writes = [
            ("POST", "/api/v1/documents", {"files": {"file": ("분석.txt", "분석가의 문서".encode(), "text/plain")}}),
            ("DELETE", f"/api/v1/documents/{doc['id']}", {}),
            ("DELETE", f"/api/v1/documents/{doc['id']}", {"params": {"purge": "true"}}),
            ("POST", f"/api/v1/documents/{doc['id']}/restore", {}),
            ("POST", f"/api/v1/documents/{doc['id']}/tags", {"json": {"tag": "예산"}}),
            # Even a body the endpoint would refuse (422) is refused for the role first.
            ("POST", f"/api/v1/documents/{doc['id']}/tags", {"json": {"tag": 7}}),
            ("DELETE", f"/api/v1/documents/{doc['id']}/tags/경제", {"params": {"source": "model"}}),
        ]
        for method, path, kwargs in writes:
            r = await client.request(method, path, headers=auth(analyst), **kwargs)
            assert r.status_code == 403, (method, path, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            body = r.json()
            assert body["status"] == 403 and body["role"] == "analyst" and "analyst role is read-only" in body["detail"]

        # Nothing changed: the user's document is still there, and the analyst's upload was not stored.
        listed = (await client.get("/api/v1/documents", headers=auth(user))).json()["items"]
        assert [d["id"] for d in listed] == [doc["id"]]
        # An analyst still reads the audit log, and someone holding analyst and user may write.
        assert (await client.get("/api/v1/audit", headers=auth(analyst))).status_code == 200
        both = make_token(tenant, roles=("analyst", "user"))
        assert (await upload(client, both, "둘 다.txt", "분석과 작성".encode())).status_code == 202
