"""Fair dispatch of tagging jobs by the outbox relay, against the real PostgreSQL and RabbitMQ:
a tenant's backlog does not starve another tenant, the per-tenant cap holds with two relays, and
finished jobs release the next ones."""
from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator

import aio_pika
import psycopg
import pytest

from services.common.amqp import DOCUMENT_UPLOADED, Topology, message_id
from services.common.db import Database
from services.upload.relay import OutboxRelay
from services.upload.settings import UploadSettings
from tests.conftest import AMQP_URL, DB_HOST, DB_PORT, create_tenant

pytestmark = pytest.mark.integration

CAP = 4


@pytest.fixture
async def topology(amqp_prefix: str) -> AsyncIterator[Topology]:
    """A topology of this test's own, so other tests' jobs never mix in."""
    topo = Topology(prefix=f"{amqp_prefix}-fair-{uuid.uuid4().hex[:6]}")
    connection = await aio_pika.connect(AMQP_URL)
    await topo.declare(await connection.channel())
    yield topo
    await topo.delete(await connection.channel())
    await connection.close()


@pytest.fixture
async def make_relay(test_db_name: str, topology: Topology) -> AsyncIterator:  # type: ignore[type-arg]
    relays: list[OutboxRelay] = []
    settings = UploadSettings(db_host=DB_HOST, db_port=DB_PORT, db_name=test_db_name)

    async def _make() -> OutboxRelay:
        db = Database(settings.dsn(user=settings.relay_db_user), min_size=1, max_size=2)
        await db.open()
        relay = OutboxRelay(db, AMQP_URL, topology, batch_size=50, max_in_flight=CAP)
        await relay.connect()
        relays.append(relay)
        return relay

    yield _make
    for relay in relays:
        await relay.stop()
        await relay.db.close()


def queue_documents(admin_dsn: str, tenant_id: str, count: int) -> list[str]:
    """`count` queued documents of the tenant with their outbox rows, as upload writes them."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    with psycopg.connect(admin_dsn, autocommit=True) as conn, conn.cursor() as cur:
        for doc_id in ids:
            sha = hashlib.sha256(doc_id.encode()).hexdigest()
            cur.execute("INSERT INTO documents.documents (id, tenant_id, title, filename, content_type, size_bytes, "
                        "sha256) VALUES (%s, %s, 't', 't.txt', 'text/plain', 1, %s)", (doc_id, tenant_id, sha))
            payload = {"event": DOCUMENT_UPLOADED, "document_id": doc_id, "tenant_id": tenant_id, "sha256": sha}
            cur.execute("INSERT INTO documents.outbox (tenant_id, event_type, message_id, payload, document_id) "
                        "VALUES (%s, %s, %s, %s, %s)",
                        (tenant_id, DOCUMENT_UPLOADED, message_id(doc_id, sha), json.dumps(payload), doc_id))
    return ids


def finish(admin_dsn: str, document_ids: list[str], status: str = "tagged") -> None:
    """What RecordTaggingResult does to a document (the trigger frees its job's slot)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE documents.documents SET status = %s WHERE id = ANY(%s::uuid[])", (status, document_ids))


def in_flight(admin_dsn: str, tenant_id: str) -> list[str]:
    with psycopg.connect(admin_dsn) as conn:
        rows = conn.execute("SELECT document_id FROM documents.outbox WHERE tenant_id = %s AND sent_at IS NOT NULL "
                            "AND finished_at IS NULL ORDER BY id", (tenant_id,)).fetchall()
    return [str(r[0]) for r in rows]


async def published(topology: Topology) -> list[dict]:
    """The jobs in the queue, in queue order (taken off it)."""
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    queue = await channel.get_queue(topology.jobs_queue)
    out = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        out.append(json.loads(message.body))
    await connection.close()
    return out


async def drain(relay: OutboxRelay) -> int:
    total = 0
    while sent := await relay.publish_batch():
        total += sent
    return total


async def test_a_backlog_does_not_starve_another_tenant(admin_dsn, make_relay, topology) -> None:
    tenant_a = create_tenant(admin_dsn, f"fa-{uuid.uuid4().hex[:8]}")
    tenant_b = create_tenant(admin_dsn, f"fb-{uuid.uuid4().hex[:8]}")
    a_docs = queue_documents(admin_dsn, tenant_a, 200)
    b_docs = queue_documents(admin_dsn, tenant_b, 1)  # written after all of A's
    relay = await make_relay()
    await drain(relay)

    ours = [m for m in await published(topology) if m["tenant_id"] in (tenant_a, tenant_b)]
    position = [m["document_id"] for m in ours].index(b_docs[0])
    assert position < 2 * CAP, f"B's job was publish #{position + 1}, the bound is tenants x N = {2 * CAP}"
    assert [m["document_id"] for m in ours if m["tenant_id"] == tenant_a] == a_docs[:CAP], "A is capped, in order"
    assert in_flight(admin_dsn, tenant_a) == a_docs[:CAP]

    # Finished jobs release the next ones, oldest first; a failure or a delete frees a slot too.
    finish(admin_dsn, a_docs[:2])
    finish(admin_dsn, a_docs[2:3], status="failed")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM documents.documents WHERE id = %s", (a_docs[3],))
    assert await drain(relay) == CAP
    assert [m["document_id"] for m in await published(topology)] == a_docs[CAP:2 * CAP]
    assert await drain(relay) == 0, "nothing more until a job finishes"


async def test_the_cap_holds_with_two_relays(admin_dsn, make_relay, topology) -> None:
    tenant = create_tenant(admin_dsn, f"fc-{uuid.uuid4().hex[:8]}")
    docs = queue_documents(admin_dsn, tenant, 60)
    relays = [await make_relay(), await make_relay()]
    finished: list[str] = []
    for _ in range(12):
        await asyncio.gather(*(r.publish_batch() for r in relays for _ in range(3)))
        flying = in_flight(admin_dsn, tenant)
        assert len(flying) <= CAP, f"{len(flying)} jobs in flight, cap {CAP}"
        finish(admin_dsn, flying[:3])
        finished += flying[:3]
    jobs = [m["document_id"] for m in await published(topology) if m["tenant_id"] == tenant]
    assert len(jobs) == len(set(jobs)), "no job published twice"
    assert jobs == docs[:len(jobs)], "a tenant's jobs go out oldest first"
    assert len(jobs) == len(finished) + len(in_flight(admin_dsn, tenant))
