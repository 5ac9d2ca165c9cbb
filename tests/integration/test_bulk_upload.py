"""Bulk upload: several `file` parts in one request, each stored or refused on its own."""
from __future__ import annotations

import uuid

import httpx
import psycopg
import pytest

from services.upload.settings import UploadSettings
from tests.conftest import create_tenant
from tests.integration.test_upload import KOREAN_TEXT, auth, running
from tests.integration.test_upload import settings as settings  # the fixture, re-exported

pytestmark = pytest.mark.integration

Part = tuple[str, tuple[str | None, bytes | str, str] | tuple[None, str]]


def file_part(name: str, data: bytes) -> Part:
    return ("file", (name, data, "application/octet-stream"))


def title_part(title: str) -> Part:
    return ("title", (None, title))


async def bulk(client: httpx.AsyncClient, token: str, parts: list[Part]) -> httpx.Response:
    return await client.post("/api/v1/documents", headers=auth(token), files=parts)


def stored_rows(admin_dsn: str, tenant_id: str) -> tuple[int, int]:
    """(documents, document.uploaded outbox rows) of the tenant, read as the admin role."""
    with psycopg.connect(admin_dsn) as conn:
        docs = conn.execute("SELECT count(*) FROM documents.documents WHERE tenant_id = %s", (tenant_id,)).fetchone()
        outbox = conn.execute("SELECT count(*) FROM documents.outbox WHERE tenant_id = %s "
                              "AND event_type = 'document.uploaded'", (tenant_id,)).fetchone()
    assert docs is not None and outbox is not None
    return docs[0], outbox[0]


async def test_mixed_files_answer_per_file_and_refused_files_leave_nothing(settings: UploadSettings, admin_dsn,
                                                                           make_token) -> None:
    tenant = create_tenant(admin_dsn, f"bulk-{uuid.uuid4().hex[:8]}", quota_bytes=10_000)
    token = make_token(tenant)
    good = KOREAN_TEXT.encode()
    other = "두 번째 문서의 내용".encode()
    async with running(settings) as (client, _, components):
        resp = await bulk(client, token, [
            file_part("좋은 문서.txt", good),
            file_part("가짜.hwp", b"not an OLE file"),
            file_part("빈 파일.pdf", b""),
            file_part("큰 파일.txt", b"a" * (settings.max_upload_bytes + 1)),
            file_part("프로그램.exe", b"MZ"),
            title_part("두 번째 제목"),
            file_part("두번째.txt", other),
            file_part("같은 내용.txt", good),
            file_part("할당량 초과.txt", b"b" * 9_900),
        ])
        assert resp.status_code == 207, resp.text
        body = resp.json()
        results = body["results"]
        assert [(r["filename"], r["status"]) for r in results] == [
            ("좋은 문서.txt", 202), ("가짜.hwp", 415), ("빈 파일.pdf", 422), ("큰 파일.txt", 413),
            ("프로그램.exe", 415), ("두번째.txt", 202), ("같은 내용.txt", 200), ("할당량 초과.txt", 507)]
        first, second, duplicate = results[0]["document"], results[5]["document"], results[6]["document"]
        assert first["status"] == "queued" and first["duplicate"] is False and first["title"] == "좋은 문서"
        assert second["title"] == "두 번째 제목"
        assert duplicate["duplicate"] is True and duplicate["id"] == first["id"]
        for refused in (results[1], results[2], results[3], results[4], results[7]):
            problem = refused["problem"]
            assert problem["status"] == refused["status"] and problem["type"].startswith("urn:doctag:problem:")
            assert [e["field"] for e in problem["errors"]] == ["file"]
        assert results[3]["problem"]["max_bytes"] == settings.max_upload_bytes
        assert results[7]["problem"]["type"] == "urn:doctag:problem:quota-exceeded"
        assert body["summary"] == {"files": 8, "queued": 2, "duplicates": 1, "refused": 5}
        assert body["quota"]["used_bytes"] == len(good) + len(other)

        # Nothing half-stored: two documents, two jobs, two blobs, no leftovers, quota for two.
        assert stored_rows(admin_dsn, tenant) == (2, 2)
        assert list(components.blobs.incoming.iterdir()) == []
        blobs = [p for p in (components.blobs.root / tenant).rglob("*") if p.is_file()]
        assert sorted(p.name for p in blobs) == sorted([first["sha256"], second["sha256"]])
        quota = (await client.get("/api/v1/quota", headers=auth(token))).json()
        assert (quota["used_bytes"], quota["documents"]) == (len(good) + len(other), 2)


async def test_files_past_the_cap_are_not_stored(settings: UploadSettings, admin_dsn, make_token) -> None:
    tenant = create_tenant(admin_dsn, f"cap-{uuid.uuid4().hex[:8]}")
    token = make_token(tenant)
    capped = settings.model_copy(update={"max_files_per_request": 3})
    async with running(capped) as (client, _, components):
        resp = await bulk(client, token, [file_part(f"문서{i}.txt", f"내용 {i}".encode()) for i in range(5)])
        assert resp.status_code == 207, resp.text
        results = resp.json()["results"]
        assert [(r["filename"], r["status"]) for r in results] == [
            ("문서0.txt", 202), ("문서1.txt", 202), ("문서2.txt", 202), ("문서3.txt", 413)]
        problem = results[3]["problem"]
        assert problem["type"] == "urn:doctag:problem:too-many-files"
        assert (problem["max_files"], problem["files_not_stored"]) == (3, 2)
        assert resp.json()["summary"] == {"files": 5, "queued": 3, "duplicates": 0, "refused": 2}
        assert stored_rows(admin_dsn, tenant) == (3, 3)
        assert list(components.blobs.incoming.iterdir()) == []


async def test_single_file_answer_is_unchanged_and_a_trailing_bulk_title_is_refused(
        settings: UploadSettings, admin_dsn, make_token) -> None:
    tenant = create_tenant(admin_dsn, f"one-{uuid.uuid4().hex[:8]}")
    token = make_token(tenant)
    async with running(settings) as (client, _, components):
        # One file, its title after it (as `curl -F file=@x -F title=y` sends it): today's answer.
        one = await bulk(client, token, [file_part("하나.txt", b"one"), title_part("제목")])
        assert one.status_code == 202 and one.json()["title"] == "제목" and "results" not in one.json()
        refused = await bulk(client, token, [file_part("하나.exe", b"one")])
        assert refused.status_code == 415 and refused.headers["content-type"] == "application/problem+json"

        two = await bulk(client, token, [file_part("a.txt", b"a"), file_part("b.txt", b"b"), title_part("뒤 제목")])
        assert [(r["filename"], r["status"]) for r in two.json()["results"]] == [("a.txt", 202), ("b.txt", 422)]
        assert [e["field"] for e in two.json()["results"][1]["problem"]["errors"]] == ["title"]
        assert stored_rows(admin_dsn, tenant) == (2, 2)
        assert list(components.blobs.incoming.iterdir()) == []
