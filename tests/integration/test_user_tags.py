"""Tag corrections by people (migration 0015): a model tag removed stays removed, a person's own tag
is kept apart (`source: user`), both are in the audit log and both are what search sees; the
documents list filters by upload time and lists deleted documents apart; against the real
PostgreSQL and RabbitMQ."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import psycopg
import pytest

from services.upload import repository as repo
from services.upload.settings import UploadSettings
from tests.conftest import create_tenant

from .test_document_lifecycle import audit_rows, search_ids
from .test_upload import KOREAN_TEXT, auth, record_tagged, running, upload

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(upload_settings: UploadSettings) -> UploadSettings:
    return upload_settings.model_copy(update={"purge_enabled": False})


@pytest.fixture
def tenant(admin_dsn: str) -> str:
    return create_tenant(admin_dsn, f"t-{uuid.uuid4().hex[:8]}")


def sources(doc: dict) -> set[tuple[str, str]]:
    return {(t["tag"], t["source"]) for t in doc["tags"]}


async def test_user_tags_are_kept_apart_audited_and_searched(settings, tenant, make_token, test_db_name,
                                                              admin_dsn) -> None:
    user_id = str(uuid.uuid4())
    token = make_token(tenant, user_id=user_id, username="kim")
    async with running(settings) as (client, stub, components):
        doc = (await upload(client, token, "예산.txt", KOREAN_TEXT.encode())).json()
        assert doc["uploaded_by"] == {"id": user_id, "username": "kim"}
        await record_tagged(stub, tenant, doc, KOREAN_TEXT)
        url = f"/api/v1/documents/{doc['id']}/tags"

        added = await client.post(url, headers=auth(token), json={"tag": "  재정 검토  "})
        assert added.status_code == 201, added.text
        assert sources(added.json()) == {("경제", "model"), ("재정 검토", "user")}
        user_tag = next(t for t in added.json()["tags"] if t["source"] == "user")
        assert user_tag["score"] == 1.0 and user_tag["model_version"] is None
        # Adding it again changes nothing and is not audited twice.
        assert (await client.post(url, headers=auth(token), json={"tag": "재정 검토"})).status_code == 201
        # The same tag from the model and from a person are two tags, each removable on its own.
        both = await client.post(url, headers=auth(token), json={"tag": "경제"})
        assert sources(both.json()) == {("경제", "model"), ("경제", "user"), ("재정 검토", "user")}
        removed = await client.delete(f"{url}/{quote('경제')}", headers=auth(token), params={"source": "user"})
        assert sources(removed.json()) == {("경제", "model"), ("재정 검토", "user")}

        hits, facets = await search_ids(test_db_name, tenant, "재정 검토")
        assert hits == [doc["id"]] and facets["재정 검토"] == 1

        removed = await client.delete(f"{url}/{quote('경제')}", headers=auth(token), params={"source": "model"})
        assert removed.status_code == 200, removed.text
        assert sources(removed.json()) == {("재정 검토", "user")}
        assert (await search_ids(test_db_name, tenant, "경제"))[0] == []
        listed = (await client.get("/api/v1/documents", headers=auth(token), params={"tag": "경제"})).json()
        assert listed["items"] == []

        # Tagging the document again (the statement every tagging result goes through) does not bring
        # back what a person removed.
        async with components.db.tenant_transaction(tenant) as conn:
            await repo.store_tagging_result(conn, doc["id"], KOREAN_TEXT,
                                            [{"tag": "경제", "score": 0.8, "model_name": "m", "model_version": "2"},
                                             {"tag": "사회", "score": 0.5, "model_name": "m", "model_version": "2"}],
                                            text_terms=["정부"])
        now = (await client.get(f"/api/v1/documents/{doc['id']}", headers=auth(token))).json()
        assert sources(now) == {("사회", "model"), ("재정 검토", "user")}

        # Adding back a tag the person had removed lifts the rejection.
        await client.post(url, headers=auth(token), json={"tag": "경제"})
        async with components.db.tenant_transaction(tenant) as conn:
            await repo.store_tagging_result(conn, doc["id"], KOREAN_TEXT,
                                            [{"tag": "경제", "score": 0.8, "model_name": "m", "model_version": "2"}],
                                            text_terms=["정부"])
        now = (await client.get(f"/api/v1/documents/{doc['id']}", headers=auth(token))).json()
        assert sources(now) == {("경제", "model"), ("경제", "user"), ("재정 검토", "user")}

    corrections = [(r["action"], r["details"]["tag"], r["details"]["source"], r["actor_name"])
                   for r in audit_rows(admin_dsn, tenant) if r["action"].startswith("document.tag_")]
    assert corrections == [("document.tag_added", "재정 검토", "user", "kim"),
                           ("document.tag_added", "경제", "user", "kim"),
                           ("document.tag_removed", "경제", "user", "kim"),
                           ("document.tag_removed", "경제", "model", "kim"),
                           ("document.tag_added", "경제", "user", "kim")]
    model_removal = [r for r in audit_rows(admin_dsn, tenant) if r["action"] == "document.tag_removed"][1]
    assert model_removal["details"]["score"] == 0.9 and model_removal["details"]["model_version"] == "1"



async def test_tag_corrections_refuse_bad_input_and_other_tenants(settings, tenant, admin_dsn, make_token) -> None:
    token = make_token(tenant)
    other = make_token(create_tenant(admin_dsn, f"o-{uuid.uuid4().hex[:8]}"))
    async with running(settings) as (client, stub, _):
        doc = (await upload(client, token, "예산.txt", KOREAN_TEXT.encode())).json()
        await record_tagged(stub, tenant, doc, KOREAN_TEXT)
        url = f"/api/v1/documents/{doc['id']}/tags"
        for body in ({"tag": ""}, {"tag": "   "}, {"tag": "가" * 101}, {"tag": "a\u0000b"}, {"tag": 5}, {}):
            r = await client.post(url, headers=auth(token), json=body)
            assert r.status_code == 422 and r.json()["errors"][0]["field"] == "tag", (body, r.text)
        r = await client.delete(f"{url}/{quote('없는태그')}", headers=auth(token), params={"source": "model"})
        assert r.status_code == 404 and r.json()["errors"][0]["field"] == "tag"
        r = await client.delete(f"{url}/{quote('경제')}", headers=auth(token), params={"source": "robot"})
        assert r.status_code == 422
        # Another department's token finds no such document, and changes nothing.
        assert (await client.post(url, headers=auth(other), json={"tag": "침입"})).status_code == 404
        r = await client.delete(f"{url}/{quote('경제')}", headers=auth(other), params={"source": "model"})
        assert r.status_code == 404
        assert (await client.post(f"/api/v1/documents/{uuid.uuid4()}/tags", headers=auth(token),
                                  json={"tag": "x"})).status_code == 404
        # A deleted document cannot be tagged.
        await client.delete(f"/api/v1/documents/{doc['id']}", headers=auth(token))
        assert (await client.post(url, headers=auth(token), json={"tag": "x"})).status_code == 404
        restored = (await client.post(f"/api/v1/documents/{doc['id']}/restore", headers=auth(token))).json()
        assert sources(restored) == {("경제", "model")}


async def test_documents_list_filters_by_upload_time(settings, tenant, admin_dsn, make_token) -> None:
    token = make_token(tenant)
    async with running(settings) as (client, _, _components):
        old = (await upload(client, token, "old.txt", b"old text one")).json()
        new = (await upload(client, token, "new.txt", b"new text two")).json()
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute("UPDATE documents.documents SET created_at = now() - interval '10 days' WHERE id = %s",
                         (old["id"],))
        cut = (datetime.now(UTC) - timedelta(days=5)).isoformat()

        async def ids(**params: str) -> list[str]:
            r = await client.get("/api/v1/documents", headers=auth(token), params=params)
            assert r.status_code == 200, r.text
            return [d["id"] for d in r.json()["items"]]

        assert await ids(since=cut) == [new["id"]]
        assert await ids(until=cut) == [old["id"]]
        assert await ids() == [new["id"], old["id"]]
        r = await client.get("/api/v1/documents", headers=auth(token), params={"since": "어제"})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "since"
        r = await client.get("/api/v1/documents", headers=auth(token),
                             params={"since": "2026-11-20", "until": "2026-11-10"})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "until"


async def test_deleted_documents_are_listed_apart_until_restored(settings, tenant, make_token) -> None:
    token = make_token(tenant)
    async with running(settings) as (client, _, _components):
        kept = (await upload(client, token, "kept.txt", b"kept text")).json()
        gone = (await upload(client, token, "gone.txt", b"gone text")).json()
        assert kept["deleted_at"] is None
        assert (await client.delete(f"/api/v1/documents/{gone['id']}", headers=auth(token))).status_code == 204

        async def listed(**params: str) -> list[dict]:
            r = await client.get("/api/v1/documents", headers=auth(token), params=params)
            assert r.status_code == 200, r.text
            return list(r.json()["items"])

        assert [d["id"] for d in await listed()] == [kept["id"]]
        trash = await listed(deleted="true")
        assert [d["id"] for d in trash] == [gone["id"]] and trash[0]["deleted_at"].endswith("Z")
        assert (await client.post(f"/api/v1/documents/{gone['id']}/restore", headers=auth(token))).status_code == 200
        assert await listed(deleted="true") == []
        assert [d["id"] for d in await listed()] == [gone["id"], kept["id"]]
