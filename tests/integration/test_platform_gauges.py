"""The gauges the alert rules read (infra/prometheus/rules): queue depths from the real broker,
storage and API quota use per tenant from the real database, as each service sets them."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime

import aio_pika
import psycopg
import pytest
from prometheus_client import REGISTRY

from gateway.quotas import DailyQuotas
from services.common.amqp import Topology
from services.common.db import Database
from services.tagging_worker import queue_depth
from services.upload.service import DocumentService
from services.upload.settings import UploadSettings
from tests.conftest import AMQP_URL, create_tenant

pytestmark = pytest.mark.integration


def _value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_queue_depth_reports_jobs_and_dead_letters_and_drops_a_missing_queue(amqp_prefix: str) -> None:
    topology = Topology(prefix=f"{amqp_prefix}-depth-{uuid.uuid4().hex[:6]}")
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        events, _ = await topology.declare(channel)
        for i in range(3):
            await events.publish(aio_pika.Message(f"job {i}".encode()), routing_key="document.uploaded")
        dlx = await channel.get_exchange(topology.dead_letter_exchange)
        await dlx.publish(aio_pika.Message(b"dead"), routing_key=topology.dead_letter_queue)
        missing = f"{topology.prefix}.no-such-queue"
        depths = await queue_depth.poll_once(connection, (topology.jobs_queue, topology.dead_letter_queue, missing))
        assert depths == {topology.jobs_queue: 3, topology.dead_letter_queue: 1}
        assert _value("doctag_amqp_queue_messages", queue=topology.jobs_queue) == 3
        assert _value("doctag_amqp_queue_messages", queue=topology.dead_letter_queue) == 1
        assert _value("doctag_amqp_queue_messages", queue=missing) is None
        # The refused passive declaration closed only its own channel.
        assert not channel.is_closed
        await topology.delete(channel)
    finally:
        await connection.close()


async def test_storage_quota_gauges_follow_the_quota_row(admin_dsn: str, upload_settings: UploadSettings) -> None:
    tenant = create_tenant(admin_dsn, f"g-{uuid.uuid4().hex[:8]}", quota_bytes=1000)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE documents.quotas SET used_bytes = 850 WHERE tenant_id = %s", (tenant,))
    db = Database(upload_settings.dsn(), min_size=1, max_size=2)
    await db.open()
    try:
        await DocumentService(upload_settings, db, None).quota(tenant)  # type: ignore[arg-type]
    finally:
        await db.close()
    assert _value("doctag_tenant_storage_quota_bytes", tenant=tenant) == 1000
    assert _value("doctag_tenant_storage_used_bytes", tenant=tenant) == 850


async def test_api_quota_gauges_count_calls_and_the_reset(admin_dsn: str, upload_settings: UploadSettings) -> None:
    tenant = create_tenant(admin_dsn, f"a-{uuid.uuid4().hex[:8]}")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE identity.tenants SET api_daily_quota = 2 WHERE id = %s", (tenant,))
    db = Database(upload_settings.dsn(user="doctag_gateway"), min_size=1, max_size=2)
    await db.open()
    quotas = DailyQuotas(db, default_quota=10_000, timezone="Asia/Seoul", warning_percent=80)
    try:
        await quotas.consume(tenant)
        assert _value("doctag_tenant_api_calls", tenant=tenant) == 1
        await quotas.consume(tenant)
        with pytest.raises(Exception, match="used up"):
            await quotas.consume(tenant)  # refused, and the gauge still says the quota is full
    finally:
        await db.close()
    assert _value("doctag_tenant_api_calls", tenant=tenant) == 2
    assert _value("doctag_tenant_api_daily_quota", tenant=tenant) == 2
    resets = _value("doctag_tenant_api_quota_resets_timestamp_seconds", tenant=tenant)
    assert resets is not None and resets > datetime.now(UTC).timestamp()
