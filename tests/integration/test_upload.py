"""Upload service against the real PostgreSQL and RabbitMQ: HTTP API, quota, outbox relay,
gRPC Documents, tenant isolation."""
from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager

import aio_pika
import grpc
import httpx
import psycopg
import pytest

from services.common.amqp import Topology, message_id
from services.common.auth import sign_token
from services.common.capability import CapabilityVerifier
from services.common.grpc_utils import bind, create_server
from services.common.pb import documents_pb2 as pb
from services.common.pb import documents_pb2_grpc as pb_grpc
from services.upload.app import UploadComponents, build_http_app
from services.upload.grpc_api import DocumentsServicer
from services.upload.settings import UploadSettings
from tests.conftest import AMQP_URL, DB_ADMIN, DB_HOST, DB_PORT, SAMPLES, create_tenant
from tests.support import WorkerDocumentsStub, aio_channel, grpc_security

pytestmark = pytest.mark.integration

KOREAN_TEXT = "정부는 내년 예산을 12조 원 늘리기로 했다. 지방자치단체의 재정 부담을 덜기 위한 조치다.\n"


@pytest.fixture
def settings(upload_settings: UploadSettings) -> UploadSettings:
    return upload_settings


def upload_grpc_server(components: UploadComponents, settings: UploadSettings) -> tuple[grpc.aio.Server, int]:
    """upload's Documents service as `python -m services.upload` runs it: mutual TLS, caller
    authorisation, job capabilities verified with the session's key (not started yet)."""
    server = create_server("upload-test", grpc_security("upload", jwt_public_key=settings.public_key_path))
    pb_grpc.add_DocumentsServicer_to_server(
        DocumentsServicer(components.service, CapabilityVerifier(settings.capability_public_key_path)), server)
    return server, bind(server, "127.0.0.1:0", grpc_security("upload"))


def user_token_for(settings: UploadSettings) -> Callable[[str], str]:
    """An end user's token of a tenant, signed with the key whose public half `settings` trusts."""
    def token(tenant_id: str) -> str:
        return sign_token(private_key_file=settings.public_key_path.with_name("jwt_private.pem"),
                          user_id=str(uuid.uuid4()), tenant_id=tenant_id, tenant_slug="t", username="tester",
                          roles=["user"], issuer="doctag", audience="doctag-api", ttl_seconds=600)
    return token


@asynccontextmanager
async def running(settings: UploadSettings):  # type: ignore[no-untyped-def]
    """Upload in-process (HTTP client) and its gRPC server on a socket, with a client that calls
    it as the tagging worker does (tests.support.WorkerDocumentsStub)."""
    components = UploadComponents(settings)
    await components.start()
    app = build_http_app(components, manage_lifecycle=False)
    server, port = upload_grpc_server(components, settings)
    await server.start()
    channel = aio_channel(f"127.0.0.1:{port}", "tagging-worker", "upload")
    gateway_channel = aio_channel(f"127.0.0.1:{port}", "gateway", "upload")
    admin_dsn = f"host={DB_HOST} port={DB_PORT} user={DB_ADMIN} dbname={settings.db_name}"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://upload") as client:
        try:
            yield client, WorkerDocumentsStub(channel, admin_dsn, user_token_for(settings), gateway_channel), components
        finally:
            await channel.close()
            await gateway_channel.close()
            await server.stop(0)
            await components.stop()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def upload(client: httpx.AsyncClient, token: str, name: str, data: bytes, title: str | None = None,
                 ctype: str = "application/octet-stream", duplicate: str | None = None) -> httpx.Response:
    form = {"title": title} if title is not None else None
    params = {"duplicate": duplicate} if duplicate is not None else None
    return await client.post("/api/v1/documents", headers=auth(token), files={"file": (name, data, ctype)}, data=form,
                             params=params)


def outbox_payloads(admin_dsn: str, tenant_id: str, event_type: str) -> list[dict]:
    """The tenant's outbox rows of one event type, oldest first (read as the admin role)."""
    with psycopg.connect(admin_dsn) as conn:
        rows = conn.execute("SELECT payload FROM documents.outbox WHERE tenant_id = %s AND event_type = %s "
                            "ORDER BY id", (tenant_id, event_type)).fetchall()
    return [r[0] for r in rows]


@pytest.fixture
def tenants(admin_dsn: str) -> tuple[str, str]:
    return (create_tenant(admin_dsn, f"a-{uuid.uuid4().hex[:8]}"),
            create_tenant(admin_dsn, f"b-{uuid.uuid4().hex[:8]}"))


async def test_upload_queues_document_and_publishes_event(settings, tenants, make_token) -> None:
    tenant_a, _ = tenants
    token = make_token(tenant_a)
    async with running(settings) as (client, _, _components):
        connection = await aio_pika.connect_robust(AMQP_URL)
        channel = await connection.channel()
        _, jobs = await Topology(prefix=settings.amqp_prefix).declare(channel)
        await jobs.purge()
        data = KOREAN_TEXT.encode("utf-8")
        resp = await upload(client, token, "예산 보도자료.txt", data, title="2027년 예산안")
        assert resp.status_code == 202, resp.text
        doc = resp.json()
        assert doc["status"] == "queued" and doc["title"] == "2027년 예산안"
        assert doc["sha256"] == hashlib.sha256(data).hexdigest() and doc["size_bytes"] == len(data)
        assert resp.headers["location"] == f"/api/v1/documents/{doc['id']}"

        # The session's queue may still hold other tests' jobs: wait for this upload's own message.
        expected_id = message_id(doc["id"], doc["sha256"])
        message = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            got = await jobs.get(no_ack=True, fail=False)
            if got is not None and got.message_id == expected_id:
                message = got
                break
            if got is None:
                await asyncio.sleep(0.1)  # poll interval
        assert message is not None, "the outbox relay did not publish the upload"
        body = json.loads(message.body)
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert body["document_id"] == doc["id"] and body["tenant_id"] == tenant_a
        # The job carries upload's signed capability for exactly this document, tenant and content.
        cap = CapabilityVerifier(settings.capability_public_key_path).verify_for(
            body["capability"], doc["id"], sha256=doc["sha256"])
        assert cap.tenant_id == tenant_a and cap.expires_at > time.time() + 3600
        await connection.close()


async def test_read_list_content_and_korean_filename(settings, tenants, make_token) -> None:
    tenant_a, tenant_b = tenants
    token_a, token_b = make_token(tenant_a), make_token(tenant_b)
    async with running(settings) as (client, _, _components):
        first = (await upload(client, token_a, "첫번째.txt", "첫 문서".encode())).json()
        second = (await upload(client, token_a, "두번째 문서.txt", KOREAN_TEXT.encode())).json()

        listed = (await client.get("/api/v1/documents", headers=auth(token_a), params={"limit": 1})).json()
        assert [d["id"] for d in listed["items"]] == [second["id"]]
        page2 = (await client.get("/api/v1/documents", headers=auth(token_a),
                                  params={"limit": 1, "cursor": listed["next_cursor"]})).json()
        assert page2["items"][0]["id"] == first["id"]
        # A cursor belongs to its filters: the same cursor with another upload-time range is refused.
        since = "2000-01-01T00:00:00+00:00"
        dated = (await client.get("/api/v1/documents", headers=auth(token_a),
                                  params={"limit": 1, "since": since})).json()
        assert [d["id"] for d in dated["items"]] == [second["id"]] and dated["next_cursor"]
        same = await client.get("/api/v1/documents", headers=auth(token_a),
                                params={"limit": 1, "since": since, "cursor": dated["next_cursor"]})
        assert same.status_code == 200 and same.json()["items"][0]["id"] == first["id"]
        for changed in ({"since": "2001-01-01T00:00:00+00:00"}, {}, {"since": since, "deleted": "true"}):
            refused = await client.get("/api/v1/documents", headers=auth(token_a),
                                       params={"limit": 1, "cursor": dated["next_cursor"], **changed})
            assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "cursor"

        got = await client.get(f"/api/v1/documents/{second['id']}", headers=auth(token_a))
        assert got.status_code == 200 and got.json()["status"] == "queued" and got.json()["tags"] == []

        content = await client.get(f"/api/v1/documents/{second['id']}/content", headers=auth(token_a))
        assert content.status_code == 200 and content.content == KOREAN_TEXT.encode()
        assert content.headers["content-type"].startswith("text/plain")
        disposition = content.headers["content-disposition"]
        assert "filename*=UTF-8''%EB%91%90%EB%B2%88%EC%A7%B8%20%EB%AC%B8%EC%84%9C.txt" in disposition
        assert disposition.isascii()

        # The other tenant sees nothing of it.
        for path in (f"/api/v1/documents/{second['id']}", f"/api/v1/documents/{second['id']}/content"):
            other = await client.get(path, headers=auth(token_b))
            assert other.status_code == 404
            assert other.headers["content-type"] == "application/problem+json"
        assert (await client.delete(f"/api/v1/documents/{second['id']}", headers=auth(token_b))).status_code == 404
        assert (await client.get("/api/v1/documents", headers=auth(token_b))).json()["items"] == []


async def test_documents_are_sorted_on_the_server_across_pages(settings, tenants, make_token) -> None:
    tenant_a, _ = tenants
    token = make_token(tenant_a)
    async with running(settings) as (client, stub, _components):
        made = []
        for title, size in (("다 보고서", 30), ("가 계획", 10), ("나 예산", 50), ("Report", 20), ("agenda", 40)):
            made.append((await upload(client, token, f"{title}.txt", ("가" * size).encode(), title=title)).json())

        async def walk(sort: str) -> list[str]:
            """Every title in the order `sort`, one row per page (so every step goes through a cursor)."""
            titles, cursor = [], None
            while True:
                params: dict[str, object] = {"limit": 1, "sort": sort, **({"cursor": cursor} if cursor else {})}
                page = await client.get("/api/v1/documents", headers=auth(token), params=params)
                assert page.status_code == 200, page.text
                titles += [d["title"] for d in page.json()["items"]]
                cursor = page.json()["next_cursor"]
                if not cursor:
                    return titles

        assert await walk("title") == ["agenda", "Report", "가 계획", "나 예산", "다 보고서"]
        assert await walk("size") == ["나 예산", "agenda", "다 보고서", "Report", "가 계획"]
        assert await walk("oldest") == [d["title"] for d in made]
        assert await walk("newest") == [d["title"] for d in reversed(made)]
        await stub.RecordTaggingResult(pb.RecordTaggingResultRequest(
            tenant_id=tenant_a, document_id=made[2]["id"], content_sha256=made[2]["sha256"],
            outcome=pb.TAGGING_OUTCOME_FAILED, error="damaged"), timeout=30)
        by_status = await walk("status")
        assert by_status[0] == "나 예산"  # failed first, then the queued ones
        assert sorted(by_status[1:]) == sorted(d["title"] for d in made if d is not made[2])

        # A cursor belongs to its order: one made for `title` is refused for `size` and for the default.
        first = (await client.get("/api/v1/documents", headers=auth(token),
                                  params={"limit": 1, "sort": "title"})).json()
        for other in ({"sort": "size"}, {}):
            refused = await client.get("/api/v1/documents", headers=auth(token),
                                       params={"limit": 1, "cursor": first["next_cursor"], **other})
            assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "cursor"
        bad = await client.get("/api/v1/documents", headers=auth(token), params={"sort": "title; DROP TABLE"})
        assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
        assert bad.json()["errors"][0]["field"] == "sort"


@pytest.mark.skipif(not (SAMPLES / "hwp").is_dir(), reason="shared samples not available")
async def test_hwp_and_hwpx_uploads_are_accepted(settings, tenants, make_token) -> None:
    token = make_token(tenants[0])
    async with running(settings) as (client, _, _components):
        for path, content_type in ((SAMPLES / "hwp" / "pyhwp__sample-5017.hwp", "application/x-hwp"),
                                   (SAMPLES / "hwpx" / "hwpxlib__20240919__테스트문서.hwpx", "application/hwp+zip")):
            resp = await upload(client, token, path.name, path.read_bytes())
            assert resp.status_code == 202, resp.text
            doc = (await client.get(f"/api/v1/documents/{resp.json()['id']}", headers=auth(token))).json()
            assert (doc["content_type"], doc["filename"], doc["status"]) == (content_type, path.name, "queued")
        refused = await upload(client, token, "pyhwp__nonole.hwp", (SAMPLES / "hwp" / "pyhwp__nonole.hwp").read_bytes())
        assert refused.status_code == 415
        problem = refused.json()
        assert problem["errors"] == [{"field": "file", "message": "the file is named as HWP but its content is "
                                                                  "not a HWP file"}]


async def test_text_format_uploads_are_accepted_and_disguised_documents_refused(settings, tenants,
                                                                                 make_token) -> None:
    token = make_token(tenants[0])
    async with running(settings) as (client, _, _components):
        for name, data, content_type in (
            ("보도자료.html", "<p>보도자료 &amp; 예산</p>".encode("euc-kr"), "text/html"),
            ("목록.xml", '<?xml version="1.0"?><목록>예산</목록>'.encode(), "application/xml"),
            ("예산.csv", "부서,예산\r\n".encode("cp949"), "text/csv"),
            ("회의록.md", "# 회의록".encode("utf-16"), "text/markdown"),
        ):
            resp = await upload(client, token, name, data)
            assert resp.status_code == 202, resp.text
            doc = (await client.get(f"/api/v1/documents/{resp.json()['id']}", headers=auth(token))).json()
            assert (doc["content_type"], doc["filename"]) == (content_type, name)
        refused = await upload(client, token, "보고서.txt", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
        assert refused.status_code == 415
        assert refused.json()["errors"] == [{"field": "file",
                                             "message": "the file is named as TXT but its content is a PDF file"}]


async def test_bad_input_gets_problem_with_field(settings, tenants, make_token) -> None:
    token = make_token(tenants[0])
    async with running(settings) as (client, _, components):
        cases = [
            (await upload(client, token, "한글.hwp", b"HWP Document File"), 415, "file"),
            (await upload(client, token, "pyhwp__nonole.hwp", b"non-ole file\n"), 415, "file"),
            (await upload(client, token, "문서.hwpx", b"non-zip file\n"), 415, "file"),
            (await upload(client, token, "empty.pdf", b""), 422, "file"),
            (await upload(client, token, "fake.pdf", b"this is not a pdf"), 415, "file"),
            (await upload(client, token, "binary.txt", b"\x00\x01\x02garbage"), 415, "file"),
            (await upload(client, token, "big.txt", b"a" * (settings.max_upload_bytes + 1)), 413, "file"),
            (await upload(client, token, "ok.txt", b"ok", title="x" * 301), 422, "title"),
            (await client.post("/api/v1/documents", headers=auth(token), files={"title": (None, "no file")}),
             422, "file"),
            (await client.post("/api/v1/documents", headers={**auth(token), "content-type": "application/json"},
                               content=b"{}"), 415, "Content-Type"),
            (await client.post("/api/v1/documents", headers={**auth(token),
                               "content-type": "multipart/form-data; boundary=XYZ"},
                               content=b"--XYZ\r\nContent-Disposition: form-data; name=\"file\"; "
                                       b"filename=\"a.txt\"\r\n\r\nabc"),
             400, "body"),
            (await client.get("/api/v1/documents/not-a-uuid", headers=auth(token)), 422, "id"),
            (await client.get("/api/v1/documents", headers=auth(token), params={"status": "done"}), 422, "status"),
            (await client.get("/api/v1/documents", headers=auth(token), params={"cursor": "!!"}), 422, "cursor"),
            (await client.get("/api/v1/documents", headers=auth(token), params={"limit": 0}), 422, "limit"),
        ]
        for resp, status, field in cases:
            assert resp.status_code == status, (resp.status_code, resp.text)
            problem = resp.json()
            assert resp.headers["content-type"] == "application/problem+json"
            assert problem["status"] == status and problem["type"].startswith("urn:doctag:problem:")
            assert field in [e["field"] for e in problem.get("errors", [])], problem
            assert problem["request_id"]
        # Nothing was left behind by the refused uploads.
        assert list(components.blobs.incoming.iterdir()) == []
        assert (await client.get("/api/v1/quota", headers=auth(token))).json()["used_bytes"] == 0
        assert (await client.get("/api/v1/documents", headers=auth(token))).json()["items"] == []


async def test_tokens_are_checked(settings, tenants, make_token) -> None:
    async with running(settings) as (client, _, _components):
        assert (await client.get("/api/v1/documents")).status_code == 401
        expired = make_token(tenants[0], ttl=-60)
        resp = await client.get("/api/v1/documents", headers=auth(expired))
        assert resp.status_code == 401 and resp.json()["type"] == "urn:doctag:problem:token-expired"
        forged = make_token(tenants[0])[:-4] + "AAAA"
        assert (await client.get("/api/v1/documents", headers=auth(forged))).status_code == 401


async def test_quota_is_never_overshot_under_concurrency(settings, admin_dsn, make_token) -> None:
    """50 parallel uploads of 300 distinct bytes against 10,000 bytes: 33 fit, 17 are refused, and the
    crossing of the 80% warning threshold is announced exactly once."""
    tenant = create_tenant(admin_dsn, f"q-{uuid.uuid4().hex[:8]}", quota_bytes=10_000)
    token = make_token(tenant)
    async with running(settings) as (client, _, _components):
        results = await asyncio.gather(*[
            upload(client, token, f"f{i}.txt", f"{i:03d}".encode() * 100) for i in range(50)])
        statuses = sorted(r.status_code for r in results)
        assert statuses.count(202) == 33 and statuses.count(507) == 17, statuses
        refused = next(r for r in results if r.status_code == 507).json()
        assert refused["type"] == "urn:doctag:problem:quota-exceeded" and refused["quota_bytes"] == 10_000
        resp = await client.get("/api/v1/quota", headers=auth(token))
        storage = {k: v for k, v in resp.json().items() if k != "api"}
        assert storage == {"tenant_id": tenant, "quota_bytes": 10_000, "used_bytes": 9900,
                           "available_bytes": 100, "warning": True, "documents": 33, "deleted_bytes": 0}
        assert resp.json()["api"]["used_today"] == 0  # upload's own calls are not through the gateway
        assert resp.headers["x-quota-warning"] == "99% of the storage quota is used"
        assert len(outbox_payloads(admin_dsn, tenant, "quota.warning")) == 1


async def test_purge_releases_quota_and_keeps_shared_blob(settings, tenants, make_token) -> None:
    """A soft delete keeps the bytes and the charge; an administrator's purge frees both, the
    bytes only once no other document (deleted ones included) has them."""
    tenant = tenants[0]
    token, admin = make_token(tenant), make_token(tenant, roles=("tenant_admin",))
    async with running(settings) as (client, _, components):
        one = (await upload(client, token, "a.txt", b"same bytes")).json()
        two = (await upload(client, token, "b.txt", b"same bytes", duplicate="allow")).json()
        assert one["id"] != two["id"]
        blob = components.blobs.path(tenant, one["sha256"])
        assert blob.exists()
        assert (await client.delete(f"/api/v1/documents/{one['id']}", headers=auth(token))).status_code == 204
        assert (await client.get(f"/api/v1/documents/{one['id']}", headers=auth(token))).status_code == 404
        quota = (await client.get("/api/v1/quota", headers=auth(token))).json()
        assert (quota["used_bytes"], quota["documents"], quota["deleted_bytes"]) == (20, 1, 10)
        purge = {"purge": "true"}
        assert (await client.delete(f"/api/v1/documents/{one['id']}", headers=auth(admin),
                                    params=purge)).status_code == 204
        assert blob.exists(), "the blob is still used by the second document"
        assert (await client.get("/api/v1/quota", headers=auth(token))).json()["used_bytes"] == 10
        # A live document is purged at once too.
        assert (await client.delete(f"/api/v1/documents/{two['id']}", headers=auth(admin),
                                    params=purge)).status_code == 204
        assert not blob.exists()
        assert (await client.get("/api/v1/quota", headers=auth(token))).json()["used_bytes"] == 0
        again = await client.delete(f"/api/v1/documents/{two['id']}", headers=auth(admin), params=purge)
        assert again.status_code == 404


async def test_grpc_documents_flow_is_idempotent(settings, tenants, make_token) -> None:
    tenant_a, tenant_b = tenants
    token = make_token(tenant_a)
    async with running(settings) as (client, stub, _components):
        data = ("가나다라" * 60_000).encode()  # 720 KB: several chunks
        doc = (await upload(client, token, "long.txt", data)).json()

        chunks = [c async for c in stub.ReadContent(pb.ReadContentRequest(tenant_id=tenant_a, document_id=doc["id"]),
                                                     timeout=10)]
        assert len(chunks) > 1 and b"".join(c.data for c in chunks) == data
        assert chunks[0].sha256 == doc["sha256"] and chunks[0].filename == "long.txt"

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetDocument(pb.GetDocumentRequest(tenant_id=tenant_b, document_id=doc["id"]), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        def record(outcome, **kw):  # type: ignore[no-untyped-def]
            return stub.RecordTaggingResult(pb.RecordTaggingResultRequest(
                tenant_id=tenant_a, document_id=doc["id"], content_sha256=kw.pop("sha", doc["sha256"]),
                outcome=outcome, **kw), timeout=30)

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await record(pb.TAGGING_OUTCOME_TAGGED, sha="0" * 64, text="x")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        assert (await record(pb.TAGGING_OUTCOME_PROCESSING)).applied
        assert not (await record(pb.TAGGING_OUTCOME_PROCESSING)).applied
        tags = [pb.Tag(tag="경제", score=0.8, source="model", model_name="m", model_version="1")]
        first = await record(pb.TAGGING_OUTCOME_TAGGED, text="정부 예산을 늘렸다", tags=tags)
        assert first.applied and first.status == "tagged"
        again = await record(pb.TAGGING_OUTCOME_TAGGED, text="정부 예산을 늘렸다", tags=tags)
        assert not again.applied and again.status == "tagged"
        late_failure = await record(pb.TAGGING_OUTCOME_FAILED, error="late")
        assert not late_failure.applied and late_failure.status == "tagged"

        got = (await client.get(f"/api/v1/documents/{doc['id']}", headers=auth(token))).json()
        assert got["status"] == "tagged" and got["error"] is None
        assert got["tags"] == [{"tag": "경제", "score": 0.8, "source": "model", "model_version": "1"}]
        tagged = (await client.get("/api/v1/documents", headers=auth(token), params={"tag": "경제"})).json()
        assert [d["id"] for d in tagged["items"]] == [doc["id"]]


async def test_extraction_metadata_is_stored_and_returned(settings, tenants, make_token) -> None:
    """RecordTaggingResult's extractor, detected_format, page_count and section_count (0 / "": not
    known) are stored with a tagged or failed outcome and returned as the document's `extraction`."""
    token = make_token(tenants[0])
    async with running(settings) as (client, stub, _components):
        tagged = (await upload(client, token, "보고서.txt", "정부 예산 보고서".encode())).json()
        failed = (await upload(client, token, "암호.txt", "암호가 걸린 파일".encode())).json()
        assert tagged["extraction"] is None

        def record(doc, outcome, **kw):  # type: ignore[no-untyped-def]
            return stub.RecordTaggingResult(pb.RecordTaggingResultRequest(
                tenant_id=tenants[0], document_id=doc["id"], content_sha256=doc["sha256"], outcome=outcome, **kw),
                timeout=30)

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await record(tagged, pb.TAGGING_OUTCOME_TAGGED, text="x", page_count=-1)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        await record(tagged, pb.TAGGING_OUTCOME_PROCESSING, detected_format="pdf")  # ignored: not final
        assert (await client.get(f"/api/v1/documents/{tagged['id']}", headers=auth(token))).json()["extraction"] is None
        await record(tagged, pb.TAGGING_OUTCOME_TAGGED, text="정부 예산 보고서", detected_format="pdf",
                     extractor="pdf/pypdfium2 5.15.2", page_count=68)
        await record(failed, pb.TAGGING_OUTCOME_FAILED, error="the PDF file is encrypted", detected_format="pdf",
                     extractor="pdf/pypdfium2 5.15.2")

        got = (await client.get(f"/api/v1/documents/{tagged['id']}", headers=auth(token))).json()
        assert got["status"] == "tagged"
        assert got["extraction"] == {"format": "pdf", "extractor": "pdf/pypdfium2 5.15.2", "pages": 68,
                                     "sections": None}
        listed = (await client.get("/api/v1/documents", headers=auth(token))).json()["items"]
        assert {d["id"]: d["extraction"] for d in listed} == {
            tagged["id"]: got["extraction"],
            failed["id"]: {"format": "pdf", "extractor": "pdf/pypdfium2 5.15.2", "pages": None, "sections": None}}


async def test_rls_hides_rows_without_tenant(settings, tenants, make_token, test_db_name) -> None:
    token = make_token(tenants[0])
    async with running(settings) as (client, _, _components):
        assert (await upload(client, token, "a.txt", "비밀 문서".encode())).status_code == 202
    with psycopg.connect(host=DB_HOST, port=DB_PORT, user="doctag_upload", dbname=test_db_name) as conn:
        assert conn.execute("SELECT count(*) FROM documents.documents").fetchone()[0] == 0
        conn.execute("SELECT set_config('app.tenant_id', %s, false)", (tenants[1],))
        assert conn.execute("SELECT count(*) FROM documents.documents").fetchone()[0] == 0
        conn.execute("SELECT set_config('app.tenant_id', %s, false)", (tenants[0],))
        assert conn.execute("SELECT count(*) FROM documents.documents").fetchone()[0] >= 1


# -- extracted text ------------------------------------------------------------------------------

async def record_tagged(stub, tenant_id: str, doc: dict, text: str) -> None:  # type: ignore[no-untyped-def]
    """What the tagging worker reports for a document it tagged."""
    await stub.RecordTaggingResult(pb.RecordTaggingResultRequest(
        tenant_id=tenant_id, document_id=doc["id"], content_sha256=doc["sha256"],
        outcome=pb.TAGGING_OUTCOME_TAGGED, text=text,
        tags=[pb.Tag(tag="경제", score=0.9, source="model", model_name="m", model_version="1")]), timeout=30)


async def test_text_is_served_in_pages_of_characters(settings, tenants, make_token) -> None:
    tenant_a, tenant_b = tenants
    token_a, token_b = make_token(tenant_a), make_token(tenant_b)
    # Hangul (3 bytes in UTF-8) and an emoji (4 bytes, one code point): offsets count characters.
    text = "예산안 😀 " + KOREAN_TEXT * 3
    async with running(settings) as (client, stub, _components):
        doc = (await upload(client, token_a, "예산.txt", KOREAN_TEXT.encode())).json()
        path = f"/api/v1/documents/{doc['id']}/text"

        early = await client.get(path, headers=auth(token_a))
        assert early.status_code == 409 and early.headers["content-type"] == "application/problem+json"
        assert early.json()["document_status"] == "queued" and "status queued" in early.json()["detail"]
        assert early.json()["type"] == "urn:doctag:problem:document-not-tagged"

        await record_tagged(stub, tenant_a, doc, text)
        whole = await client.get(path, headers=auth(token_a))
        assert whole.status_code == 200 and whole.text == text
        assert whole.headers["content-type"] == "text/plain; charset=utf-8"
        assert whole.headers["x-text-length"] == str(len(text)) and "x-next-offset" not in whole.headers

        first = await client.get(path, headers=auth(token_a), params={"limit": 5})
        assert first.text == "예산안 😀" and first.headers["x-next-offset"] == "5"
        pages, offset = [], 0
        while offset is not None:
            page = await client.get(path, headers=auth(token_a), params={"offset": offset, "limit": 40})
            assert page.status_code == 200 and page.headers["x-text-length"] == str(len(text))
            pages.append(page.text)
            offset = int(page.headers["x-next-offset"]) if "x-next-offset" in page.headers else None
        assert "".join(pages) == text and len(pages) == -(-len(text) // 40)

        at_end = await client.get(path, headers=auth(token_a), params={"offset": len(text)})
        assert at_end.status_code == 200 and at_end.text == "" and "x-next-offset" not in at_end.headers

        for params, field in (({"offset": len(text) + 1}, "offset"), ({"offset": -1}, "offset"),
                              ({"offset": "x"}, "offset"), ({"limit": 0}, "limit"), ({"limit": 1_000_001}, "limit")):
            bad = await client.get(path, headers=auth(token_a), params=params)
            assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json", params
            assert [e["field"] for e in bad.json()["errors"]] == [field], bad.json()
        assert (await client.get(path, headers=auth(token_a), params={"limit": 1_000_000})).status_code == 200

        # Another tenant's document and an unknown one look the same.
        for other in ((path, token_b), (f"/api/v1/documents/{uuid.uuid4()}/text", token_a)):
            missing = await client.get(other[0], headers=auth(other[1]))
            assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
        assert (await client.get("/api/v1/documents/x/text", headers=auth(token_a))).status_code == 422

        failed = (await upload(client, token_a, "암호.txt", "암호 문서".encode())).json()
        await stub.RecordTaggingResult(pb.RecordTaggingResultRequest(
            tenant_id=tenant_a, document_id=failed["id"], content_sha256=failed["sha256"],
            outcome=pb.TAGGING_OUTCOME_FAILED, error="encrypted"), timeout=30)
        refused = await client.get(f"/api/v1/documents/{failed['id']}/text", headers=auth(token_a))
        assert refused.status_code == 409 and refused.json()["document_status"] == "failed"


# -- duplicates --------------------------------------------------------------------------------

async def test_same_bytes_answer_with_the_existing_document(settings, tenants, make_token, admin_dsn) -> None:
    tenant_a, tenant_b = tenants
    token_a, token_b = make_token(tenant_a), make_token(tenant_b)
    data = KOREAN_TEXT.encode()
    async with running(settings) as (client, stub, components):
        first = await upload(client, token_a, "원본.txt", data, title="원본")
        assert first.status_code == 202 and first.json()["duplicate"] is False
        doc = first.json()

        again = await upload(client, token_a, "다른 이름.txt", data, title="다른 제목")
        assert again.status_code == 200, again.text
        body = again.json()
        assert body["duplicate"] is True and body["id"] == doc["id"] and body["title"] == "원본"
        assert again.headers["location"] == f"/api/v1/documents/{doc['id']}"
        assert body["quota"]["used_bytes"] == len(data)
        assert (await client.get("/api/v1/quota", headers=auth(token_a))).json()["used_bytes"] == len(data)
        assert len(outbox_payloads(admin_dsn, tenant_a, "document.uploaded")) == 1
        assert list(components.blobs.incoming.iterdir()) == []

        # A separate copy when asked for: charged and queued as any upload.
        copy = await upload(client, token_a, "사본.txt", data, duplicate="allow")
        assert copy.status_code == 202 and copy.json()["duplicate"] is False and copy.json()["id"] != doc["id"]
        assert (await client.get("/api/v1/quota", headers=auth(token_a))).json()["used_bytes"] == 2 * len(data)
        assert len(outbox_payloads(admin_dsn, tenant_a, "document.uploaded")) == 2
        bad = await upload(client, token_a, "x.txt", data, duplicate="maybe")
        assert bad.status_code == 422 and [e["field"] for e in bad.json()["errors"]] == ["duplicate"]

        # Another tenant's identical file is never revealed: a new document of its own.
        other = await upload(client, token_b, "원본.txt", data)
        assert other.status_code == 202 and other.json()["duplicate"] is False
        assert other.json()["id"] not in (doc["id"], copy.json()["id"])

        # Deleting the original keeps the bytes; the next upload finds the copy, not the deleted original.
        assert (await client.delete(f"/api/v1/documents/{doc['id']}", headers=auth(token_a))).status_code == 204
        assert components.blobs.exists(tenant_a, doc["sha256"])
        content = await client.get(f"/api/v1/documents/{copy.json()['id']}/content", headers=auth(token_a))
        assert content.content == data
        found = await upload(client, token_a, "또.txt", data)
        assert found.status_code == 200 and found.json()["id"] == copy.json()["id"]

        # A failed document is no answer: the same bytes are processed again.
        await stub.RecordTaggingResult(pb.RecordTaggingResultRequest(
            tenant_id=tenant_a, document_id=copy.json()["id"], content_sha256=doc["sha256"],
            outcome=pb.TAGGING_OUTCOME_FAILED, error="model-serving unavailable after 10 attempts"), timeout=30)
        retried = await upload(client, token_a, "다시.txt", data)
        assert retried.status_code == 202 and retried.json()["id"] != copy.json()["id"]


async def test_parallel_uploads_of_the_same_bytes_make_one_document(settings, tenants, make_token,
                                                                    admin_dsn) -> None:
    tenant = tenants[0]
    token = make_token(tenant)
    data = "동시에 올린 같은 문서".encode() * 50
    async with running(settings) as (client, _, components):
        results = await asyncio.gather(*[upload(client, token, f"same-{i}.txt", data) for i in range(10)])
        assert sorted(r.status_code for r in results) == [200] * 9 + [202], [r.text for r in results]
        assert len({r.json()["id"] for r in results}) == 1
        listed = (await client.get("/api/v1/documents", headers=auth(token))).json()["items"]
        assert [d["id"] for d in listed] == [results[0].json()["id"]]
        assert (await client.get("/api/v1/quota", headers=auth(token))).json()["used_bytes"] == len(data)
        assert len(outbox_payloads(admin_dsn, tenant, "document.uploaded")) == 1
        assert list(components.blobs.incoming.iterdir()) == []


# -- quota warning -----------------------------------------------------------------------------

async def take_quota_warnings(channel: aio_pika.abc.AbstractChannel, queue_name: str, tenant_id: str,
                              expected: int) -> list[dict]:
    """The tenant's quota.warning messages in the queue, waiting up to 5 s for `expected` of them
    (other tests' tenants publish into the same session queue: theirs are acknowledged and skipped)."""
    queue = await channel.get_queue(queue_name)
    found: list[dict] = []
    for _ in range(50):
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            body = json.loads(message.body)
            if body["tenant_id"] == tenant_id:
                assert message.type == "quota.warning" and message.message_id
                found.append(body)
        if len(found) >= expected:
            break
        await asyncio.sleep(0.1)
    return found


async def test_quota_warning_once_per_crossing(settings, admin_dsn, make_token) -> None:
    tenant = create_tenant(admin_dsn, f"w-{uuid.uuid4().hex[:8]}", quota_bytes=1000)
    token = make_token(tenant)

    def warnings() -> list[dict]:
        return outbox_payloads(admin_dsn, tenant, "quota.warning")

    async with running(settings) as (client, _, _components):
        connection = await aio_pika.connect_robust(AMQP_URL)
        channel = await connection.channel()
        topology = Topology(prefix=settings.amqp_prefix)
        await topology.declare(channel)

        below = await upload(client, token, "a.txt", b"a" * 700)
        assert below.status_code == 202 and below.json()["quota"] == {
            "quota_bytes": 1000, "used_bytes": 700, "available_bytes": 300, "warning": False}
        assert "x-quota-warning" not in below.headers and warnings() == []

        crossing = await upload(client, token, "b.txt", b"b" * 150)
        assert crossing.json()["quota"]["warning"] is True
        assert crossing.headers["x-quota-warning"] == "85% of the storage quota is used"
        [event] = warnings()
        assert event["event"] == "quota.warning" and event["tenant_id"] == tenant
        assert (event["used_bytes"], event["quota_bytes"], event["used_percent"], event["threshold_percent"]) == \
            (850, 1000, 85, 80)
        assert event["document_id"] == crossing.json()["id"]

        still = await upload(client, token, "c.txt", b"c" * 50)
        assert still.headers["x-quota-warning"] == "90% of the storage quota is used"
        assert len(warnings()) == 1, "one event per crossing, not per upload"
        quota = await client.get("/api/v1/quota", headers=auth(token))
        assert quota.json()["warning"] is True and quota.headers["x-quota-warning"].startswith("90%")

        # Full: refused with the quota problem, still one event.
        full = await upload(client, token, "d.txt", b"d" * 101)
        assert full.status_code == 507 and full.json()["type"] == "urn:doctag:problem:quota-exceeded"
        assert len(warnings()) == 1

        # A soft delete keeps the space charged (a restore must fit): still warning.
        deleted = await client.delete(f"/api/v1/documents/{crossing.json()['id']}", headers=auth(token))
        assert deleted.status_code == 204
        assert (await client.get("/api/v1/quota", headers=auth(token))).json()["warning"] is True
        # Below the threshold after a purge: re-armed; the next crossing is announced again.
        admin = make_token(tenant, roles=("tenant_admin",))
        purged = await client.delete(f"/api/v1/documents/{crossing.json()['id']}", headers=auth(admin),
                                     params={"purge": "true"})
        assert purged.status_code == 204
        quota = await client.get("/api/v1/quota", headers=auth(token))
        assert quota.json()["warning"] is False and "x-quota-warning" not in quota.headers
        again = await upload(client, token, "e.txt", b"e" * 100)
        assert again.headers["x-quota-warning"] == "85% of the storage quota is used"
        assert [e["used_bytes"] for e in warnings()] == [850, 850]

        # Both crossings reach RabbitMQ through the outbox relay.
        published = await take_quota_warnings(channel, topology.quota_warnings_queue, tenant, expected=2)
        assert [e["document_id"] for e in published] == [crossing.json()["id"], again.json()["id"]]
        await connection.close()
