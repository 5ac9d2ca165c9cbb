"""Passage embeddings, worker → upload: the real tagging worker asks the (controlled) model for the
document's passage embedding and records it with the tagging result through the real upload
service; upload stores it (documents.document_embeddings) with its model and version, and refuses
a vector that is not a unit vector."""
from __future__ import annotations

import hashlib
import json
import uuid

import grpc
import numpy as np
import psycopg
import pytest

from services.common.capability import CapabilitySigner
from services.common.embeddings import pack, unpack
from services.common.pb import documents_pb2 as pb
from services.tagging_worker.job import Job
from services.tagging_worker.worker import passage_text
from services.upload.relay import job_message
from tests.conftest import create_tenant
from tests.integration.test_pii_recording import platform
from tests.integration.test_tagging_worker import keyed_vector

pytestmark = pytest.mark.integration

TEXT = "행정안전부는 공공기관 문서의 자동 분류 시스템을 도입한다."


async def test_worker_records_the_passage_embedding_with_upload(upload_settings, admin_dsn, make_token) -> None:  # type: ignore[no-untyped-def]
    tenant_id = create_tenant(admin_dsn, f"emb-{uuid.uuid4().hex[:8]}")
    data = TEXT.encode()
    async with platform(upload_settings) as (client, worker, _stub):
        resp = await client.post("/api/v1/documents", headers={"Authorization": f"Bearer {make_token(tenant_id)}"},
                                 files={"file": ("분류.txt", data, "text/plain")}, data={"title": "문서 자동 분류"})
        assert resp.status_code == 202, resp.text
        doc_id = resp.json()["id"]
        with psycopg.connect(admin_dsn) as conn:
            payload = conn.execute("SELECT payload FROM documents.outbox WHERE document_id = %s",
                                   (doc_id,)).fetchone()
        assert payload is not None
        # The job the relay would publish carries the title: the embedding reads title + text.
        signer = CapabilitySigner(upload_settings.capability_private_key_path, 600)
        job = Job.from_body(json.dumps(job_message(payload[0], signer)).encode())
        assert job.title == "문서 자동 분류"
        assert await worker.process(job) == "tagged"
    with psycopg.connect(admin_dsn) as conn:
        row = conn.execute("SELECT model, version, dim, vector, tenant_id FROM documents.document_embeddings "
                           "WHERE document_id = %s", (doc_id,)).fetchone()
        analysed = conn.execute("SELECT analyser_version FROM documents.documents WHERE id = %s", (doc_id,)).fetchone()
    assert row is not None and row[0] == "test-e5@0" and row[1] == "passage/test" and row[2] == 8
    assert np.array_equal(unpack(row[3]), keyed_vector(passage_text("문서 자동 분류", TEXT)))
    assert str(row[4]) == tenant_id
    assert analysed is not None and analysed[0].startswith("kiwi-")


async def test_upload_refuses_an_embedding_that_is_not_a_unit_vector(upload_settings, admin_dsn, make_token) -> None:  # type: ignore[no-untyped-def]
    tenant_id = create_tenant(admin_dsn, f"emb-{uuid.uuid4().hex[:8]}")
    data = TEXT.encode()
    async with platform(upload_settings) as (client, _worker, stub):
        resp = await client.post("/api/v1/documents", headers={"Authorization": f"Bearer {make_token(tenant_id)}"},
                                 files={"file": ("a.txt", data, "text/plain")})
        doc_id = resp.json()["id"]
        request = pb.RecordTaggingResultRequest(
            tenant_id=tenant_id, document_id=doc_id, content_sha256=hashlib.sha256(data).hexdigest(),
            outcome=pb.TAGGING_OUTCOME_TAGGED, text=TEXT, embedding=pack(np.ones(4, dtype=np.float32)),
            embedding_model="e5", embedding_version="v")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RecordTaggingResult(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "embedding" in err.value.details()
        with psycopg.connect(admin_dsn) as conn:
            status = conn.execute("SELECT status FROM documents.documents WHERE id = %s", (doc_id,)).fetchone()
        assert status is not None and status[0] == "queued", "nothing half-stored"
