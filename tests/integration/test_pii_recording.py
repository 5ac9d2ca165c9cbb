"""Personal data per document, worker → upload: the real tagging worker processes a job against
the real upload service (real PostgreSQL, gRPC on a real socket) and a controlled model; the
counts per kind end up in `documents.documents.pii`, the document JSON and the list filter."""
from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import httpx
import psycopg
import pytest

from services.common.capability import CapabilitySigner
from services.common.grpc_utils import add_health, bind, create_server
from services.common.pb import documents_pb2 as pb
from services.common.pb import model_serving_pb2_grpc
from services.common.settings import CommonSettings
from services.tagging_worker.job import Job
from services.tagging_worker.settings import WorkerSettings
from services.tagging_worker.worker import TaggingWorker
from services.upload.app import UploadComponents, build_http_app
from services.upload.settings import UploadSettings
from tests.conftest import AMQP_URL, DB_ADMIN, DB_HOST, DB_PORT, create_tenant
from tests.integration.test_tagging_worker import ControlledModel
from tests.integration.test_upload import upload_grpc_server, user_token_for
from tests.support import WorkerDocumentsStub, aio_channel, grpc_security

pytestmark = pytest.mark.integration

WITH_PII = ("민원 처리 결과 통지\n신청인 홍길동(주민등록번호 900101-1234568)\n"
            "연락처 010-1234-5678, 02-2100-1234, 이메일 hong@example.com\n"
            "환급금은 신한은행 110-123-456789 로 입금합니다. 예산 집행 2024-01-15, 금액 1,000,000원.\n")
WITHOUT_PII = "2027년 예산안 보도자료: 주문번호 2024011512345678, 총 사업비 1,000,000원, 시행일 2024-01-15.\n"


@pytest.fixture
def settings(upload_settings: UploadSettings) -> UploadSettings:
    return upload_settings


@asynccontextmanager
async def platform(settings: UploadSettings) -> AsyncIterator[tuple[httpx.AsyncClient, TaggingWorker, Any]]:
    """Upload (HTTP in-process, gRPC on a socket), a controlled model server and a worker that
    talks to both over gRPC (its AMQP side is not started: jobs are handed to `process`)."""
    components = UploadComponents(settings)
    await components.start()
    app = build_http_app(components, manage_lifecycle=False)
    upload_server, upload_port = upload_grpc_server(components, settings)
    model_server = create_server("test-model", grpc_security("model-serving"))
    model_serving_pb2_grpc.add_ModelServingServicer_to_server(ControlledModel(), model_server)
    add_health(model_server, [])
    model_port = bind(model_server, "127.0.0.1:0", grpc_security("model-serving"))
    await upload_server.start()
    await model_server.start()
    worker = TaggingWorker(WorkerSettings(
        amqp_url=AMQP_URL, documents_grpc_target=f"127.0.0.1:{upload_port}",
        model_grpc_target=f"127.0.0.1:{model_port}", retry_attempts=2, retry_initial_seconds=0.05,
        documents_timeout_seconds=10, model_timeout_seconds=10, read_timeout_seconds=10, extract_timeout_seconds=30))
    channel = aio_channel(f"127.0.0.1:{upload_port}", "tagging-worker", "upload")
    gateway_channel = aio_channel(f"127.0.0.1:{upload_port}", "gateway", "upload")
    admin_dsn = f"host={DB_HOST} port={DB_PORT} user={DB_ADMIN} dbname={settings.db_name}"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://upload") as client:
        try:
            yield client, worker, WorkerDocumentsStub(channel, admin_dsn, user_token_for(settings), gateway_channel)
        finally:
            await channel.close()
            await gateway_channel.close()
            await worker.documents_channel.close()
            await worker.model_channel.close()
            worker.extractor.close()
            await upload_server.stop(0)
            await model_server.stop(0)
            await components.stop()


async def upload_and_process(client: httpx.AsyncClient, worker: TaggingWorker, token: str, tenant_id: str,
                             name: str, text: str) -> dict[str, Any]:
    data = text.encode("utf-8")
    resp = await client.post("/api/v1/documents", headers={"Authorization": f"Bearer {token}"},
                             files={"file": (name, data, "text/plain")})
    assert resp.status_code == 202, resp.text
    doc: dict[str, Any] = resp.json()
    assert doc["pii"] == {} and doc["has_pii"] is False  # not scanned before tagging
    sha = hashlib.sha256(data).hexdigest()
    capability = CapabilitySigner(CommonSettings().capability_private_key_path, 600).sign(doc["id"], tenant_id, sha)
    job = Job(document_id=doc["id"], tenant_id=tenant_id, sha256=sha, filename=name,
              content_type="text/plain", size_bytes=len(data), capability=capability)
    assert await worker.process(job) == "tagged"
    return doc


async def test_worker_records_pii_counts_with_upload(settings, admin_dsn, make_token) -> None:
    tenant_id = create_tenant(admin_dsn, f"pii-{uuid.uuid4().hex[:8]}")
    token = make_token(tenant_id)
    headers = {"Authorization": f"Bearer {token}"}
    async with platform(settings) as (client, worker, stub):
        with_pii = await upload_and_process(client, worker, token, tenant_id, "민원.txt", WITH_PII)
        without = await upload_and_process(client, worker, token, tenant_id, "보도자료.txt", WITHOUT_PII)

        doc = (await client.get(f"/api/v1/documents/{with_pii['id']}", headers=headers)).json()
        assert doc["status"] == "tagged"
        assert doc["pii"] == {"rrn": 1, "mobile": 1, "landline": 1, "email": 1, "bank_account": 1}
        assert doc["has_pii"] is True
        clean = (await client.get(f"/api/v1/documents/{without['id']}", headers=headers)).json()
        assert clean["status"] == "tagged" and clean["pii"] == {} and clean["has_pii"] is False

        async def listed(**params: str) -> list[str]:
            resp = await client.get("/api/v1/documents", headers=headers, params=params)
            assert resp.status_code == 200, resp.text
            return [d["id"] for d in resp.json()["items"]]

        assert await listed(pii="true") == [with_pii["id"]]
        assert await listed(pii="false") == [without["id"]]
        assert await listed() == [without["id"], with_pii["id"]]
        assert await listed(pii="true", status="tagged", limit="1") == [with_pii["id"]]
        bad = await client.get("/api/v1/documents", headers=headers, params={"pii": "maybe"})
        assert bad.status_code == 422

        got = await stub.GetDocument(pb.GetDocumentRequest(tenant_id=tenant_id, document_id=with_pii["id"]))
        assert dict(got.pii_counts) == doc["pii"]

    with psycopg.connect(admin_dsn) as conn:
        row = conn.execute("SELECT pii FROM documents.documents WHERE id = %s", (with_pii["id"],)).fetchone()
        audit = conn.execute("SELECT details FROM documents.audit_log WHERE document_id = %s "
                             "AND action = 'document.tagged'", (with_pii["id"],)).fetchone()
    assert row is not None and row[0] == doc["pii"]
    assert audit is not None and audit[0]["pii"] == doc["pii"]  # counts only: no value in the audit log
    assert "900101" not in str(audit[0]) and "010-1234" not in str(audit[0])


async def test_invalid_pii_counts_are_refused(settings, admin_dsn, make_token) -> None:
    tenant_id = create_tenant(admin_dsn, f"pii-{uuid.uuid4().hex[:8]}")
    async with platform(settings) as (client, _worker, stub):
        data = WITH_PII.encode()
        resp = await client.post("/api/v1/documents", headers={"Authorization": f"Bearer {make_token(tenant_id)}"},
                                 files={"file": ("a.txt", data, "text/plain")})
        doc_id = resp.json()["id"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RecordTaggingResult(pb.RecordTaggingResultRequest(
                tenant_id=tenant_id, document_id=doc_id, content_sha256=hashlib.sha256(data).hexdigest(),
                outcome=pb.TAGGING_OUTCOME_TAGGED, text=WITH_PII, pii_counts={"RRN; DROP": 1}))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
