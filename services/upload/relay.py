"""Outbox relay: publishes committed outbox rows to RabbitMQ with publisher confirms.

Rows are claimed with FOR UPDATE SKIP LOCKED (so two upload replicas never send
the same row at once), published as persistent messages, confirmed by the broker,
and only then marked sent. A crash between publish and mark sends the row again:
the message id (document id + content hash) lets consumers recognise it.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustConnection
from prometheus_client import Counter, Gauge

from services.common.amqp import Topology
from services.common.db import Database

log = logging.getLogger(__name__)

PUBLISHED = Counter("doctag_outbox_published_total", "Outbox events published and confirmed", ["event"])
PUBLISH_ERRORS = Counter("doctag_outbox_publish_errors_total", "Outbox publish attempts that failed")
PENDING = Gauge("doctag_outbox_pending", "Outbox rows not yet published (as of the last poll)")


class OutboxRelay:
    def __init__(self, db: Database, amqp_url: str, topology: Topology, *, poll_seconds: float = 1.0,
                 batch_size: int = 100) -> None:
        self.db = db
        self.amqp_url = amqp_url
        self.topology = topology
        self.poll_seconds = poll_seconds
        self.batch_size = batch_size
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    @property
    def connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed and self._exchange is not None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._task:
            await self._task
        if self._connection:
            await self._connection.close()

    async def _connect(self) -> None:
        self._connection = await aio_pika.connect_robust(self.amqp_url, timeout=10)
        channel = await self._connection.channel(publisher_confirms=True)
        self._exchange, _ = await self.topology.declare(channel)

    async def _run(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                if not self.connected:
                    await self._connect()
                sent = await self.publish_batch()
                backoff = 0.5
                if sent == self.batch_size:
                    continue  # more waiting
            except Exception as exc:  # noqa: BLE001 - keep relaying after any failure
                PUBLISH_ERRORS.inc()
                log.warning("outbox relay error; retrying", extra={"error": f"{type(exc).__name__}: {exc}"})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 15)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_seconds)
            self._wake.clear()

    async def publish_batch(self) -> int:
        """Publishes up to batch_size unsent rows; returns how many were sent."""
        assert self._exchange is not None
        failure: Exception | None = None
        sent = 0
        async with self.db.transaction() as conn:
            rows = await (await conn.execute(
                "SELECT id, event_type, message_id, payload FROM documents.outbox WHERE sent_at IS NULL "
                "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED", (self.batch_size,))).fetchall()
            for row in rows:
                try:
                    await self._exchange.publish(
                        aio_pika.Message(
                            body=json.dumps(row["payload"], ensure_ascii=False).encode("utf-8"),
                            content_type="application/json", content_encoding="utf-8",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=row["message_id"],
                            type=row["event_type"], headers={"x-request-id": row["payload"].get("request_id", "")}),
                        routing_key=row["event_type"], mandatory=True, timeout=10)
                except Exception as exc:  # noqa: BLE001 - recorded on the row, re-raised after commit
                    await conn.execute("UPDATE documents.outbox SET attempts = attempts + 1, last_error = %s "
                                       "WHERE id = %s", (f"{type(exc).__name__}: {exc}"[:500], row["id"]))
                    failure = exc
                    break
                await conn.execute("UPDATE documents.outbox SET sent_at = now(), attempts = attempts + 1, "
                                   "last_error = NULL WHERE id = %s", (row["id"],))
                PUBLISHED.labels(row["event_type"]).inc()
                sent += 1
            pending = await (await conn.execute(
                "SELECT count(*) AS n FROM documents.outbox WHERE sent_at IS NULL")).fetchone()
            assert pending is not None  # count(*) always returns a row
            PENDING.set(max(pending["n"] - sent, 0))
        if failure is not None:
            raise failure
        return sent
