"""Soft delete, restore, purge (by an administrator and by the purge job) and the audit log,
against the real PostgreSQL and RabbitMQ; search is checked in-process as the doctag_search role."""
from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from services.common.db import Database
from services.common.pb import documents_pb2 as pb
from services.search import engine, query
from services.search.settings import SearchSettings
from services.upload.purge import PurgeJob
from services.upload.settings import UploadSettings
from tests.conftest import DB_HOST, DB_PORT, create_tenant

from .test_upload import KOREAN_TEXT, auth, record_tagged, running, upload

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(upload_settings: UploadSettings) -> UploadSettings:
    """As test_upload's; the purge job runs only when a test calls it."""
    return upload_settings.model_copy(update={"purge_enabled": False})


@pytest.fixture
def tenant(admin_dsn: str) -> str:
    return create_tenant(admin_dsn, f"l-{uuid.uuid4().hex[:8]}")


async def search_ids(test_db_name: str, tenant_id: str, tag: str) -> tuple[list[str], dict[str, int]]:
    """Hits and tag facets of a tag search as the search service makes it (role doctag_search)."""
    db = Database(SearchSettings(db_name=test_db_name).dsn(), max_size=1)
    await db.open()
    try:
        result = await engine.search(db, tenant_id, query.validate(None, [tag], 50, None))
    finally:
        await db.close()
    return [h.id for h in result.hits], {f.tag: f.count for f in result.facets}


def as_search_role(test_db_name: str, tenant_id: str, sql: str, params: tuple[object, ...]) -> int:
    with psycopg.connect(host=DB_HOST, port=DB_PORT, user="doctag_search", dbname=test_db_name) as conn:
        conn.execute("SELECT set_config('app.tenant_id', %s, false)", (tenant_id,))
        row = conn.execute(sql, params).fetchone()
        assert row is not None
        return int(row[0])


def age_deletion(admin_dsn: str, document_id: str, days: int) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE documents.documents SET deleted_at = now() - make_interval(days => %s) WHERE id = %s",
                     (days, document_id))


def audit_rows(admin_dsn: str, tenant_id: str) -> list[dict]:
    with psycopg.connect(admin_dsn, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute("SELECT * FROM documents.audit_log WHERE tenant_id = %s ORDER BY id",
                            (tenant_id,)).fetchall()


async def test_soft_delete_hides_everywhere_and_restore_brings_back(settings, tenant, make_token,
                                                                    test_db_name, admin_dsn) -> None:
    token = make_token(tenant)
    async with running(settings) as (client, stub, components):
        doc = (await upload(client, token, "예산.txt", KOREAN_TEXT.encode())).json()
        await record_tagged(stub, tenant, doc, KOREAN_TEXT)
        assert (await search_ids(test_db_name, tenant, "경제"))[0] == [doc["id"]]

        assert (await client.delete(f"/api/v1/documents/{doc['id']}", headers=auth(token))).status_code == 204
        for path in ("", "/content", "/text"):
            r = await client.get(f"/api/v1/documents/{doc['id']}{path}", headers=auth(token))
            assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json", path
        assert (await client.get("/api/v1/documents", headers=auth(token))).json()["items"] == []
        assert (await client.get("/api/v1/documents", headers=auth(token), params={"tag": "경제"})).json()[
            "items"] == []
        assert await search_ids(test_db_name, tenant, "경제") == ([], {})
        # The search role sees neither the row nor its tags, however it asks.
        assert as_search_role(test_db_name, tenant, "SELECT count(*) FROM documents.documents WHERE id = %s",
                              (doc["id"],)) == 0
        assert as_search_role(test_db_name, tenant,
                              "SELECT count(*) FROM documents.document_tags WHERE document_id = %s",
                              (doc["id"],)) == 0
        # The bytes stay (restorable) and stay charged.
        assert components.blobs.exists(tenant, doc["sha256"])
        assert (await client.get("/api/v1/quota", headers=auth(token))).json()["used_bytes"] == doc["size_bytes"]
        again = await client.delete(f"/api/v1/documents/{doc['id']}", headers=auth(token))
        assert again.status_code == 404

        restored = await client.post(f"/api/v1/documents/{doc['id']}/restore", headers=auth(token))
        assert restored.status_code == 200, restored.text
        assert restored.json()["status"] == "tagged" and restored.json()["tags"][0]["tag"] == "경제"
        assert (await client.get(f"/api/v1/documents/{doc['id']}/text", headers=auth(token))).text == KOREAN_TEXT
        assert await search_ids(test_db_name, tenant, "경제") == ([doc["id"]], {"경제": 1})

        not_deleted = await client.post(f"/api/v1/documents/{doc['id']}/restore", headers=auth(token))
        assert not_deleted.status_code == 409
        assert not_deleted.json()["type"] == "urn:doctag:problem:document-not-deleted"
        unknown = await client.post(f"/api/v1/documents/{uuid.uuid4()}/restore", headers=auth(token))
        assert unknown.status_code == 404
        other = make_token(create_tenant(admin_dsn, f"o-{uuid.uuid4().hex[:8]}"))
        assert (await client.post(f"/api/v1/documents/{doc['id']}/restore", headers=auth(other))).status_code == 404


async def test_document_deleted_while_queued_is_still_tagged(settings, tenant, make_token) -> None:
    """The worker's paths see deleted documents, so a restore brings back a tagged document."""
    token = make_token(tenant)
    async with running(settings) as (client, stub, _components):
        doc = (await upload(client, token, "대기.txt", KOREAN_TEXT.encode())).json()
        assert (await client.delete(f"/api/v1/documents/{doc['id']}", headers=auth(token))).status_code == 204
        chunks = [c async for c in stub.ReadContent(pb.ReadContentRequest(tenant_id=tenant, document_id=doc["id"]))]
        assert b"".join(c.data for c in chunks) == KOREAN_TEXT.encode()
        await record_tagged(stub, tenant, doc, KOREAN_TEXT)
        restored = await client.post(f"/api/v1/documents/{doc['id']}/restore", headers=auth(token))
        assert restored.json()["status"] == "tagged"


async def test_restore_after_retention_fails_and_purge_job_frees_once(settings, tenant, make_token,
                                                                      admin_dsn) -> None:
    token = make_token(tenant)
    data = "보존 기간이 지난 문서".encode()
    async with running(settings) as (client, _stub, components):
        old = (await upload(client, token, "old.txt", data)).json()
        keep = (await upload(client, token, "keep.txt", data, duplicate="allow")).json()
        assert (await client.delete(f"/api/v1/documents/{old['id']}", headers=auth(token))).status_code == 204
        age_deletion(admin_dsn, old["id"], 91)

        late = await client.post(f"/api/v1/documents/{old['id']}/restore", headers=auth(token))
        assert late.status_code == 410 and late.headers["content-type"] == "application/problem+json"
        assert late.json()["type"] == "urn:doctag:problem:retention-expired"

        # Two replicas' jobs at once: one purges, the other finds the row locked or gone.
        jobs = [PurgeJob(components.service, interval_seconds=3600, batch_size=10) for _ in range(2)]
        await asyncio.gather(*(job.run_once() for job in jobs))
        assert (await client.get("/api/v1/quota", headers=auth(token))).json()["used_bytes"] == len(data)
        with psycopg.connect(admin_dsn) as conn:
            assert conn.execute("SELECT count(*) FROM documents.documents WHERE id = %s",
                                (old["id"],)).fetchone() == (0,)
        assert components.blobs.exists(tenant, old["sha256"]), "the live copy still has these bytes"
        purges = [r for r in audit_rows(admin_dsn, tenant) if r["action"] == "document.purged"]
        assert len(purges) == 1 and purges[0]["actor_name"] == "system" and purges[0]["actor_id"] is None
        assert purges[0]["document_id"] == uuid.UUID(old["id"]) and purges[0]["details"]["retention_days"] == 90
        assert (await client.post(f"/api/v1/documents/{old['id']}/restore", headers=auth(token))).status_code == 404

        # Within retention nothing is purged; past it the last copy goes with its bytes.
        assert (await client.delete(f"/api/v1/documents/{keep['id']}", headers=auth(token))).status_code == 204
        assert await jobs[0].run_once() == 0
        age_deletion(admin_dsn, keep["id"], 90)
        assert await jobs[0].run_once() >= 1
        assert not components.blobs.exists(tenant, keep["sha256"])
        assert (await client.get("/api/v1/quota", headers=auth(token))).json()["used_bytes"] == 0
        assert (await jobs[1].run_once()) == 0


async def test_purge_at_once_is_for_admins_only(settings, tenant, make_token, admin_dsn) -> None:
    user_id = str(uuid.uuid4())
    token = make_token(tenant, user_id=user_id, username="kim")
    async with running(settings) as (client, _stub, components):
        doc = (await upload(client, token, "a.txt", b"purge me")).json()
        denied = await client.delete(f"/api/v1/documents/{doc['id']}", headers=auth(token), params={"purge": "true"})
        assert denied.status_code == 403 and denied.headers["content-type"] == "application/problem+json"
        assert denied.json()["type"] == "urn:doctag:problem:forbidden"
        assert (await client.get(f"/api/v1/documents/{doc['id']}", headers=auth(token))).status_code == 200
        [entry] = [r for r in audit_rows(admin_dsn, tenant) if r["outcome"] == "denied"]
        assert (entry["action"], entry["actor_name"], str(entry["actor_id"])) == ("document.purged", "kim", user_id)
        assert entry["request_id"] == denied.headers["x-request-id"]

        platform = make_token(tenant, roles=("platform_admin",))
        assert (await client.delete(f"/api/v1/documents/{doc['id']}", headers=auth(platform),
                                    params={"purge": "true"})).status_code == 204
        assert not components.blobs.exists(tenant, doc["sha256"])
        assert (await client.get("/api/v1/quota", headers=auth(token))).json()["used_bytes"] == 0


async def test_duplicate_rule_ignores_deleted_documents(settings, tenant, make_token) -> None:
    token = make_token(tenant)
    data = "지운 문서와 같은 내용".encode()
    async with running(settings) as (client, _stub, _components):
        first = (await upload(client, token, "a.txt", data)).json()
        assert (await client.delete(f"/api/v1/documents/{first['id']}", headers=auth(token))).status_code == 204
        again = await upload(client, token, "a.txt", data)
        assert again.status_code == 202 and again.json()["duplicate"] is False and again.json()["id"] != first["id"]
        # Both are charged until the deleted one is purged: a restore must never overshoot the quota.
        assert (await client.get("/api/v1/quota", headers=auth(token))).json()["used_bytes"] == 2 * len(data)


# -- audit log -----------------------------------------------------------------------------------

async def audit_page(client: httpx.AsyncClient, token: str, **params: object) -> dict:
    r = await client.get("/api/v1/audit", headers=auth(token), params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def test_audit_records_each_action_and_is_scoped_by_role(settings, make_token, admin_dsn) -> None:
    tenant_a, tenant_b = (create_tenant(admin_dsn, f"au-{uuid.uuid4().hex[:8]}") for _ in range(2))
    user_id = str(uuid.uuid4())
    token = make_token(tenant_a, user_id=user_id, username="kim")
    admin_a = make_token(tenant_a, roles=("tenant_admin",), username="boss")
    admin_b = make_token(tenant_b, roles=("tenant_admin",))
    platform = make_token(tenant_b, roles=("platform_admin",))
    started = datetime.now(UTC)
    async with running(settings) as (client, stub, _components):
        rid = {"X-Request-ID": "req-upload-1"}
        doc = (await client.post("/api/v1/documents", headers={**auth(token), **rid},
                                 files={"file": ("감사.txt", KOREAN_TEXT.encode(), "text/plain")})).json()
        await upload(client, token, "again.txt", KOREAN_TEXT.encode())
        await record_tagged(stub, tenant_a, doc, KOREAN_TEXT)
        failed = (await upload(client, token, "bad.txt", b"will fail")).json()
        await stub.RecordTaggingResult(pb.RecordTaggingResultRequest(
            tenant_id=tenant_a, document_id=failed["id"], content_sha256=failed["sha256"],
            outcome=pb.TAGGING_OUTCOME_FAILED, error="unreadable"), timeout=30)
        await client.delete(f"/api/v1/documents/{doc['id']}", headers=auth(token))
        await client.post(f"/api/v1/documents/{doc['id']}/restore", headers=auth(token))
        await client.delete(f"/api/v1/documents/{doc['id']}", headers=auth(admin_a), params={"purge": "true"})
        b_doc = (await upload(client, make_token(tenant_b), "b.txt", b"tenant b")).json()

        denied = await client.get("/api/v1/audit", headers=auth(token))
        assert denied.status_code == 403 and denied.headers["content-type"] == "application/problem+json"

        items = (await audit_page(client, admin_a, limit=200))["items"]
        assert {i["tenant_id"] for i in items} == {tenant_a}
        by_action = [(i["action"], i["outcome"]) for i in reversed(items) if i["action"] != "document.processing"]
        assert by_action == [
            ("document.uploaded", "success"), ("document.duplicate", "success"), ("document.tagged", "success"),
            ("document.uploaded", "success"), ("document.failed", "failed"), ("document.deleted", "success"),
            ("document.restored", "success"), ("document.purged", "success"), ("audit.read", "denied")]
        uploaded = items[-1]
        assert uploaded["actor"] == {"id": user_id, "username": "kim"} and uploaded["request_id"] == "req-upload-1"
        assert uploaded["document_id"] == doc["id"] and uploaded["details"]["filename"] == "감사.txt"
        tagged = next(i for i in items if i["action"] == "document.tagged")
        assert tagged["actor"] == {"id": None, "username": "tagging-worker"}
        assert tagged["details"]["tags"][0]["tag"] == "경제"
        purged = next(i for i in items if i["action"] == "document.purged")
        assert purged["actor"]["username"] == "boss"

        # Tenant B's admin sees only B; a platform admin (of tenant B) sees both tenants.
        assert {i["document_id"] for i in (await audit_page(client, admin_b))["items"]} == {b_doc["id"]}
        everything = (await audit_page(client, platform, limit=200, since=started.isoformat()))["items"]
        assert {tenant_a, tenant_b} <= {i["tenant_id"] for i in everything}
        # An analyst reads across tenants too (the gateway gives it no other route).
        analyst = make_token(tenant_b, roles=("analyst",))
        seen = (await audit_page(client, analyst, limit=200, since=started.isoformat()))["items"]
        assert {tenant_a, tenant_b} <= {i["tenant_id"] for i in seen}

        # Filters.
        mine = (await audit_page(client, admin_a, actor=user_id))["items"]
        assert mine and {i["actor"]["id"] for i in mine} == {user_id}
        assert {i["actor"]["username"] for i in (await audit_page(client, admin_a, actor="boss"))["items"]} == {"boss"}
        deletes = (await audit_page(client, admin_a, action="document.deleted"))["items"]
        assert [i["document_id"] for i in deletes] == [doc["id"]]
        assert (await audit_page(client, admin_a, until=started.isoformat()))["items"] == []
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert (await audit_page(client, admin_a, since=future))["items"] == []

        # Cursor: pages of 3 make up the whole list, newest first, without repeats.
        seen, cursor = [], None
        while True:
            page = await audit_page(client, admin_a, limit=3, **({"cursor": cursor} if cursor else {}))
            seen += [i["id"] for i in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [i["id"] for i in items]

        for params, field in [({"since": "yesterday"}, "since"), ({"until": "2026-13-01"}, "until"),
                              ({"action": "document.eaten"}, "action"), ({"cursor": "garbage"}, "cursor"),
                              ({"since": "2026-02-01", "until": "2026-01-01"}, "until")]:
            bad = await client.get("/api/v1/audit", headers=auth(admin_a), params=params)
            assert bad.status_code == 422 and [e["field"] for e in bad.json()["errors"]] == [field], params


def test_audit_log_is_append_only_for_the_service_roles(admin_dsn, test_db_name) -> None:
    tenant = create_tenant(admin_dsn, f"ap-{uuid.uuid4().hex[:8]}")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO documents.audit_log (tenant_id, action) VALUES (%s, 'document.deleted')", (tenant,))
    for statement in ("UPDATE documents.audit_log SET action = 'x'", "DELETE FROM documents.audit_log",
                      "TRUNCATE documents.audit_log"):
        with psycopg.connect(host=DB_HOST, port=DB_PORT, user="doctag_upload", dbname=test_db_name) as conn:
            conn.execute("SELECT set_config('app.tenant_id', %s, false)", (tenant,))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    with psycopg.connect(host=DB_HOST, port=DB_PORT, user="doctag_gateway", dbname=test_db_name) as conn:
        conn.execute("SELECT set_config('app.tenant_id', %s, false)", (tenant,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM documents.audit_log")
    with psycopg.connect(host=DB_HOST, port=DB_PORT, user="doctag_gateway", dbname=test_db_name) as conn:
        conn.execute("SELECT set_config('app.tenant_id', %s, false)", (tenant,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # RLS: only auth.login rows
            conn.execute("INSERT INTO documents.audit_log (tenant_id, action) VALUES (%s, 'document.purged')",
                         (tenant,))
