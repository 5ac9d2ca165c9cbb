"""The tagging queue API of upload against real PostgreSQL and RabbitMQ: who sees what, and a
dead-lettered job retried until its document is tagged.

The job is dead-lettered by RabbitMQ itself (the test rejects it as the worker does with its last
delivery, and the broker routes it through the dead-letter exchange); the tagging worker's calls
to upload's real gRPC service are made as in test_upload (tests.support.WorkerDocumentsStub)."""
from __future__ import annotations

import asyncio
import json
import time
import uuid

import aio_pika
import psycopg
import pytest

from services.common.amqp import Topology, message_id
from services.common.capability import CapabilityVerifier
from services.common.pb import documents_pb2 as pb
from tests.conftest import AMQP_URL, create_tenant

from .test_upload import KOREAN_TEXT, auth, record_tagged, running, upload

pytestmark = pytest.mark.integration


async def take_job(queue: aio_pika.abc.AbstractQueue, expected: str) -> aio_pika.abc.AbstractIncomingMessage:
    """The job with message id `expected` (unacked); other tests' leftovers are dropped."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        got = await queue.get(no_ack=False, fail=False)
        if got is None:
            await asyncio.sleep(0.1)
            continue
        if got.message_id == expected:
            return got
        await got.ack()
    raise AssertionError(f"no job {expected} was published")


async def test_queue_scope_and_a_dead_lettered_job_retried_until_tagged(upload_settings, admin_dsn,
                                                                     make_token) -> None:
    settings = upload_settings
    tenant_a = create_tenant(admin_dsn, f"qa-{uuid.uuid4().hex[:8]}")
    tenant_b = create_tenant(admin_dsn, f"qb-{uuid.uuid4().hex[:8]}")
    member, admin_a = make_token(tenant_a), make_token(tenant_a, roles=("tenant_admin",), username="chief")
    admin_b = make_token(tenant_b, roles=("tenant_admin",))
    platform = make_token(tenant_b, roles=("platform_admin",), username="root")
    topology = Topology(prefix=settings.amqp_prefix)
    connection = await aio_pika.connect_robust(AMQP_URL)
    channel = await connection.channel()
    _, jobs = await topology.declare(channel)
    dead_queue = await channel.get_queue(topology.dead_letter_queue)
    async with running(settings) as (client, stub, _components):
        doc = (await upload(client, member, "예산 보고.txt", KOREAN_TEXT.encode(), title="예산 보고")).json()
        job = await take_job(jobs, message_id(doc["id"], doc["sha256"]))
        first_capability = json.loads(job.body)["capability"]
        # The worker's last delivery: it records the failure, then the broker dead-letters the job.
        await stub.RecordTaggingResult(pb.RecordTaggingResultRequest(
            tenant_id=tenant_a, document_id=doc["id"], content_sha256=doc["sha256"],
            outcome=pb.TAGGING_OUTCOME_FAILED, error="model-serving unavailable after 10 attempts"), timeout=30)
        await job.reject(requeue=False)

        seen_r = await client.get("/api/v1/tagging/queue", headers=auth(admin_a))
        assert seen_r.status_code == 200, seen_r.text
        seen = seen_r.json()
        assert seen["scope"] == "tenant" and seen["tenant_id"] == tenant_a and seen["broker"] is None
        assert [f["id"] for f in seen["failed"]] == [doc["id"]] and seen["documents"]["failed"] == 1
        assert seen["failed"][0]["title"] == "예산 보고" and "unavailable" in seen["failed"][0]["error"]
        assert seen["rate"]["failed_last_hour"] == 1 and seen["documents"]["unpublished_jobs"] == 0
        dead = [d for d in seen["dead_letters"] if d["document_id"] == doc["id"]]
        assert len(dead) == 1 and dead[0]["reason"] == "rejected" and "capability" not in dead[0]

        # Another tenant's administrator sees nothing of it, and cannot retry it, by id or by naming the tenant.
        theirs = (await client.get("/api/v1/tagging/queue", headers=auth(admin_b))).json()
        assert theirs["failed"] == [] and all(d["tenant_id"] == tenant_b for d in theirs["dead_letters"])
        r = await client.post(f"/api/v1/tagging/documents/{doc['id']}/retry", headers=auth(admin_b))
        assert r.status_code == 404 and r.json()["errors"][0]["field"] == "document_id"
        r = await client.get("/api/v1/tagging/queue", headers=auth(admin_b), params={"tenant_id": tenant_a})
        assert r.status_code == 403 and r.json()["errors"][0]["field"] == "tenant_id"
        r = await client.post(f"/api/v1/tagging/documents/{doc['id']}/retry", headers=auth(admin_b),
                              params={"tenant_id": tenant_a})
        assert r.status_code == 403
        # A member may neither look nor retry (and the refusal is audited).
        assert (await client.get("/api/v1/tagging/queue", headers=auth(member))).status_code == 403
        r = await client.post(f"/api/v1/tagging/documents/{doc['id']}/retry", headers=auth(member))
        assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"

        # The platform administrator sees every tenant, with the broker's depths.
        everyone = (await client.get("/api/v1/tagging/queue", headers=auth(platform))).json()
        assert everyone["scope"] == "platform" and everyone["broker"]["dead_lettered"] >= 1
        assert doc["id"] in {f["id"] for f in everyone["failed"]}
        assert doc["id"] in {d["document_id"] for d in everyone["dead_letters"]}

        # Retry: queued again, a new job with a freshly signed capability, the dead letter gone, audited.
        r = await client.post(f"/api/v1/tagging/documents/{doc['id']}/retry", headers=auth(admin_a))
        assert r.status_code == 202, r.text
        assert r.json()["previous_status"] == "failed" and r.json()["dead_letters_removed"] == 1
        assert (await client.get(f"/api/v1/documents/{doc['id']}", headers=auth(member))).json()["status"] == "queued"
        again = await take_job(jobs, message_id(doc["id"], doc["sha256"]))
        capability = json.loads(again.body)["capability"]
        assert capability != first_capability
        cap = CapabilityVerifier(settings.capability_public_key_path).verify_for(capability, doc["id"],
                                                                                sha256=doc["sha256"])
        assert cap.tenant_id == tenant_a and cap.expires_at > time.time() + 60
        assert not [d for d in (await client.get("/api/v1/tagging/queue", headers=auth(admin_a))).json()[
            "dead_letters"] if d["document_id"] == doc["id"]]
        # Retrying it again while its job is alive is refused.
        r = await client.post(f"/api/v1/tagging/documents/{doc['id']}/retry", headers=auth(admin_a))
        assert r.status_code == 409 and r.json()["errors"][0]["field"] == "document_id"

        # The worker takes the new job: the document is tagged.
        await record_tagged(stub, tenant_a, doc, KOREAN_TEXT)
        await again.ack()
        got = (await client.get(f"/api/v1/documents/{doc['id']}", headers=auth(member))).json()
        assert got["status"] == "tagged" and got["error"] is None and [t["tag"] for t in got["tags"]] == ["경제"]
        r = await client.post(f"/api/v1/tagging/documents/{doc['id']}/retry", headers=auth(admin_a))
        assert r.status_code == 409  # tagged documents are not retried

    with psycopg.connect(admin_dsn) as conn:
        rows = conn.execute("SELECT action, outcome, actor_name, details FROM documents.audit_log "
                            "WHERE tenant_id = %s AND action IN ('document.retried', 'queue.read') ORDER BY id",
                            (tenant_a,)).fetchall()
    assert ("queue.read", "denied", "tester") in [(a, o, n) for a, o, n, _ in rows]
    assert ("document.retried", "denied", "tester") in [(a, o, n) for a, o, n, _ in rows]
    retried = [d for a, o, _, d in rows if a == "document.retried" and o == "success"]
    assert retried == [{"previous_status": "failed", "error": "model-serving unavailable after 10 attempts",
                        "dead_letters": 1}]
    await dead_queue.purge()
    await connection.close()
