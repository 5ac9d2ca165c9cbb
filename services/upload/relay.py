"""Outbox relay: publishes committed outbox rows to RabbitMQ with publisher confirms, and
dispatches tagging jobs fairly between tenants.

Rows are claimed with FOR UPDATE SKIP LOCKED (so two upload replicas never send the same row at
once), published as persistent messages, confirmed by the broker, and only then marked sent. A
crash between publish and mark sends the row again: the message id (document id + content hash)
lets consumers recognise it.

Fair dispatch of tagging jobs (`document.uploaded`)
----------------------------------------------------
The jobs queue is one FIFO quorum queue. Publishing every outbox row into it in id order would
make a tenant's single upload wait behind every job another tenant queued before it (2,000 jobs:
minutes). So the relay is the scheduler: it keeps at most `max_in_flight` (N) jobs per tenant
*in flight* (published, document not yet `tagged`/`failed`/deleted) and leaves the rest in the
outbox, where they cost nothing. A job's document finishing frees its tenant's slot: database
triggers (migration 0008) set `outbox.finished_at` in the transaction that finishes or deletes
the document, and upload wakes its relay when a RecordTaggingResult finishes one (the other
replica's relay sees it on its next poll). Each round serves the tenants with waiting jobs and
free slots in least-recently-served order, and publishes their jobs interleaved (every tenant's
first job, then every tenant's second job, ...).

The bound: with T tenants that have jobs in flight, the queue holds at most T x N jobs, so a
tenant with nothing in flight gets its next job published in the next relay round (the upload
wakes it) behind at most (T - 1) x N jobs of other tenants, whatever their backlog, and from a
cold start its first job is among the first T x N publishes (in fact among the first T, by
the interleaving). Waiting for tagging is then bounded by (T - 1) x N jobs' work instead of every
other tenant's backlog.

Two relays (two upload replicas): a tenant's jobs are published only by the relay that holds its
`dispatch_tenants` row lock (FOR UPDATE SKIP LOCKED: the other relay serves other tenants), and
the in-flight count is read after taking it, when every earlier round for that tenant has
committed; so relays together never exceed N per tenant (margin 0). Two things can exceed it,
both bounded: a relay that crashes after publishing and before committing leaves up to
`batch_size` duplicate messages that are not counted (consumers are idempotent); and a job still
in flight after `in_flight_timeout` (dead-lettered after its delivery limit, lost) stops counting,
so a tenant is never blocked for good.

Why here rather than per-tenant queues or weighted consumption in the worker: per-tenant queues
need a queue (and its quorum group) per tenant, created and deleted dynamically, and consumers
that follow tenants coming and going, which RabbitMQ handles badly at hundreds of tenants; and a
worker that picks tenants can only choose among messages already delivered to it (its prefetch),
so one FIFO queue with 2,000 messages of tenant A still starves B. Scheduling before the queue
keeps the topology, the delivery limit, dead-lettering, confirms and manual acks exactly as they
were, and the schedule lives in PostgreSQL next to the outbox it schedules.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustConnection
from prometheus_client import Counter, Gauge

from services.common.amqp import DOCUMENT_UPLOADED, Topology
from services.common.capability import CapabilitySigner
from services.common.db import Database, DictConnection

log = logging.getLogger(__name__)

PUBLISHED = Counter("doctag_outbox_published_total", "Outbox events published and confirmed", ["event"])
PUBLISH_ERRORS = Counter("doctag_outbox_publish_errors_total", "Outbox publish attempts that failed")
PENDING = Gauge("doctag_outbox_pending", "Outbox rows not yet published (as of the last poll)")

# Every tenant with waiting jobs gets a scheduling row (in its own short transaction, so that two
# relays meeting on a new tenant wait for each other for milliseconds, not a whole round).
_REGISTER_TENANTS = (
    "INSERT INTO documents.dispatch_tenants (tenant_id) "
    "SELECT DISTINCT tenant_id FROM documents.outbox WHERE sent_at IS NULL AND event_type = %(job)s "
    "ON CONFLICT DO NOTHING")
_IN_FLIGHT = (
    "documents.outbox o WHERE o.tenant_id = {tenant} AND o.event_type = %(job)s AND o.sent_at IS NOT NULL "
    "AND o.finished_at IS NULL AND o.sent_at > now() - make_interval(secs => %(timeout)s)")
# Tenants with waiting jobs and a free slot, least recently served first; locked for this round.
_LOCK_TENANTS = (
    "SELECT d.tenant_id FROM documents.dispatch_tenants d "
    "WHERE EXISTS (SELECT 1 FROM documents.outbox o WHERE o.tenant_id = d.tenant_id "
    "              AND o.sent_at IS NULL AND o.event_type = %(job)s) "
    "AND (SELECT count(*) FROM " + _IN_FLIGHT.format(tenant="d.tenant_id") + ") < %(cap)s "
    "ORDER BY d.last_dispatch_at NULLS FIRST, d.tenant_id LIMIT %(limit)s FOR UPDATE OF d SKIP LOCKED")
_COUNT_IN_FLIGHT = "SELECT count(*) AS n FROM " + _IN_FLIGHT.format(tenant="%(tenant)s")
_CLAIM_JOBS = (
    "SELECT id, event_type, message_id, payload FROM documents.outbox "
    "WHERE tenant_id = %(tenant)s AND event_type = %(job)s AND sent_at IS NULL "
    "ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED")
_CLAIM_EVENTS = (
    "SELECT id, event_type, message_id, payload FROM documents.outbox "
    "WHERE sent_at IS NULL AND event_type <> %s ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED")


def job_message(payload: dict[str, Any], signer: CapabilitySigner) -> dict[str, Any]:
    """A tagging job as published: the outbox payload with a capability signed now (a republished row
    gets a fresh one), the only way its worker can read the document and record the result
    (services/common/capability.py)."""
    capability = signer.sign(str(payload["document_id"]), str(payload["tenant_id"]), str(payload["sha256"]))
    return {**payload, "capability": capability}


class OutboxRelay:
    def __init__(self, db: Database, amqp_url: str, topology: Topology, *, poll_seconds: float = 1.0,
                 batch_size: int = 100, max_in_flight: int = 8, in_flight_timeout: float = 900.0,
                 signer: CapabilitySigner | None = None, declare_topology: bool = True) -> None:
        self.db = db
        self.amqp_url = amqp_url
        self.topology = topology
        self.poll_seconds = poll_seconds
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        self.in_flight_timeout = in_flight_timeout
        self.signer = signer
        self.declare_topology = declare_topology
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

    async def connect(self) -> None:
        self._connection = await aio_pika.connect_robust(self.amqp_url, timeout=10)
        channel = await self._connection.channel(publisher_confirms=True)
        self._exchange, _ = await self.topology.open(channel, declare=self.declare_topology)

    async def _run(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                if not self.connected:
                    await self.connect()
                sent = await self.publish_batch()
                backoff = 0.5
                if sent:
                    continue  # more may be waiting (or have been freed meanwhile)
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
        """One round: every waiting event that is not a tagging job (in id order, uncapped), then
        the tagging jobs the fair schedule allows. Returns how many rows were sent."""
        sent = await self._publish_events()
        sent += await self._dispatch_jobs()
        return sent

    async def _publish_events(self) -> int:
        async with self.db.transaction() as conn:
            rows = await (await conn.execute(_CLAIM_EVENTS, (DOCUMENT_UPLOADED, self.batch_size))).fetchall()
            sent, failure = await self._publish_rows(conn, rows)
        if failure is not None:
            raise failure
        return sent

    async def _dispatch_jobs(self) -> int:
        params: dict[str, Any] = {"job": DOCUMENT_UPLOADED, "cap": self.max_in_flight,
                                  "timeout": self.in_flight_timeout, "limit": self.batch_size}
        async with self.db.transaction() as conn:
            await conn.execute(_REGISTER_TENANTS, params)
        async with self.db.transaction() as conn:
            tenants = [r["tenant_id"] for r in await (await conn.execute(_LOCK_TENANTS, params)).fetchall()]
            claimed: list[list[dict[str, Any]]] = []
            budget = self.batch_size
            for tenant in tenants:
                if budget <= 0:
                    break
                row = await (await conn.execute(_COUNT_IN_FLIGHT, {**params, "tenant": tenant})).fetchone()
                assert row is not None  # count(*) always returns a row
                allowance = min(self.max_in_flight - int(row["n"]), budget)
                if allowance <= 0:
                    continue
                jobs = await (await conn.execute(_CLAIM_JOBS, {**params, "tenant": tenant,
                                                               "limit": allowance})).fetchall()
                if jobs:
                    claimed.append(jobs)
                    budget -= len(jobs)
            # Interleaved: every served tenant's first job, then every one's second, ...
            order = [job for rank in itertools.zip_longest(*claimed) for job in rank if job is not None]
            served = list({str(job["payload"]["tenant_id"]) for job in order})
            sent, failure = await self._publish_rows(conn, order)
            if served:
                await conn.execute("UPDATE documents.dispatch_tenants SET last_dispatch_at = clock_timestamp() "
                                   "WHERE tenant_id = ANY(%s::uuid[])", (served,))
            pending = await (await conn.execute(
                "SELECT count(*) AS n FROM documents.outbox WHERE sent_at IS NULL")).fetchone()
            assert pending is not None  # count(*) always returns a row
            PENDING.set(int(pending["n"]))
        if failure is not None:
            raise failure
        return sent

    def _body(self, row: dict[str, Any]) -> dict[str, Any]:
        payload: dict[str, Any] = row["payload"]
        if row["event_type"] != DOCUMENT_UPLOADED or self.signer is None:
            return payload
        return job_message(payload, self.signer)

    async def _publish_rows(self, conn: DictConnection,
                            rows: list[dict[str, Any]]) -> tuple[int, Exception | None]:
        """Publishes rows in order, each confirmed before it is marked sent; stops at a failure,
        records it on the row and returns it, for the caller to raise once the transaction has
        committed the rows that were sent."""
        assert self._exchange is not None
        failure: Exception | None = None
        sent = 0
        for row in rows:
            try:
                await self._exchange.publish(
                    aio_pika.Message(
                        body=json.dumps(self._body(row), ensure_ascii=False).encode("utf-8"),
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
        return sent, failure

