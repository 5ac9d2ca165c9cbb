"""The broker's side of the tagging queue: how many jobs wait, and the dead-lettered ones.

Depths come from passive queue declarations (the declare-ok's message and consumer counts; no
`configure` permission needed). Dead-lettered jobs are read with basic.get and left unacked, so
closing the channel puts every one back: a look changes nothing. Removing the dead letters of a
document (after its retry was queued) acks just those. The dead-letter queue is shared by all
tenants: callers filter by the `tenant_id` of each job, which upload itself wrote.

While one replica looks, another replica's look sees the messages the first holds unacked as
missing; a view is a snapshot of at most `limit` messages, not a lock.

Each look returns the messages to the queue, which counts as a delivery of a quorum queue. The
dead-letter queue has no delivery limit on the RabbitMQ this platform runs (3.10); RabbitMQ 4.x
gives quorum queues a default limit of 20, so there set `delivery-limit: -1` on the dead-letter
queue by policy, or looks would eventually drop dead letters.
"""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from services.common.amqp import Topology

log = logging.getLogger(__name__)

# What a broker that is away or refuses raises (callers carry on with what the database knows).
BROKER_ERRORS: tuple[type[BaseException], ...] = (aio_pika.exceptions.AMQPException, aio_pika.exceptions.AMQPError,
                                                  OSError, TimeoutError, RuntimeError)


@dataclass(frozen=True)
class QueueDepth:
    jobs_waiting: int        # ready in the jobs queue (published, not yet delivered to a worker)
    workers: int             # consumers of the jobs queue
    dead_lettered: int       # ready in the dead-letter queue


def _death(message: AbstractIncomingMessage) -> tuple[str, str | None]:
    """(reason, when) of the message's first dead-lettering, from its x-death header."""
    headers = message.headers or {}
    reason = str(headers.get("x-first-death-reason") or "")
    when: str | None = None
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        first = deaths[0]
        reason = reason or str(first.get("reason") or "")
        at = first.get("time")
        if isinstance(at, datetime):
            when = (at if at.tzinfo else at.replace(tzinfo=UTC)).isoformat()
    return reason or "unknown", when


def describe(message: AbstractIncomingMessage) -> dict[str, Any]:
    """What an administrator may see of a dead-lettered job (never its capability)."""
    try:
        body = json.loads(message.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        body = None
    body = body if isinstance(body, dict) else {}
    reason, when = _death(message)

    def text(key: str, limit: int = 300) -> str | None:
        value = body.get(key)
        return value[:limit] if isinstance(value, str) else None

    return {"message_id": message.message_id, "document_id": _uuid(body.get("document_id")),
            "tenant_id": _uuid(body.get("tenant_id")), "filename": text("filename"), "title": text("title"),
            "reason": reason, "dead_lettered_at": when, "valid": bool(_uuid(body.get("document_id")))}


def _uuid(value: Any) -> str | None:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return None


class DeadLetters:
    """A small connection of its own (made on first use) to read depths and dead letters."""

    def __init__(self, amqp_url: str, topology: Topology, *, timeout_s: float = 5.0) -> None:
        self.amqp_url = amqp_url
        self.topology = topology
        self.timeout_s = timeout_s
        self._connection: AbstractRobustConnection | None = None
        self._lock = asyncio.Lock()

    async def _channel(self) -> AbstractChannel:
        async with self._lock:
            if self._connection is None or self._connection.is_closed:
                self._connection = await aio_pika.connect_robust(self.amqp_url, timeout=self.timeout_s)
        return await self._connection.channel()

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def depth(self) -> QueueDepth:
        channel = await self._channel()
        try:
            jobs = await channel.declare_queue(self.topology.jobs_queue, passive=True)
            dead = await channel.declare_queue(self.topology.dead_letter_queue, passive=True)
            jobs_ok, dead_ok = jobs.declaration_result, dead.declaration_result
            return QueueDepth(jobs_waiting=int(jobs_ok.message_count or 0),
                              workers=int(jobs_ok.consumer_count or 0),
                              dead_lettered=int(dead_ok.message_count or 0))
        finally:
            await channel.close()

    async def peek(self, *, tenant_id: str | None, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` dead-lettered jobs (of `tenant_id`, or every tenant's with None), oldest first."""
        found: list[dict[str, Any]] = []

        def keep(m: dict[str, Any]) -> bool:
            if tenant_id is None or m["tenant_id"] == tenant_id:
                found.append(m)
            return False  # never acked: a look changes nothing

        # A tenant's dead letters may sit behind other tenants': read further than `limit` for them.
        await self._scan(keep, limit=limit if tenant_id is None else limit * 10, stop=lambda: len(found) >= limit)
        return found

    async def remove(self, *, tenant_id: str, document_id: str, scan_limit: int = 1000) -> int:
        """Acks the dead letters of one document (now queued again); how many there were."""
        removed = 0

        def match(m: dict[str, Any]) -> bool:
            nonlocal removed
            hit = bool(m["tenant_id"] == tenant_id and m["document_id"] == document_id)
            removed += hit
            return hit

        await self._scan(match, limit=scan_limit, stop=lambda: False)
        return removed

    async def _scan(self, visit: Callable[[dict[str, Any]], bool], *, limit: int, stop: Callable[[], bool]) -> None:
        """basic.get up to `limit` messages; acks those `visit` answers True for; the others go back
        when the channel closes (unacked)."""
        channel = await self._channel()
        try:
            queue = await channel.get_queue(self.topology.dead_letter_queue, ensure=False)
            for _ in range(limit):
                message = await queue.get(no_ack=False, fail=False, timeout=self.timeout_s)
                if message is None:
                    break
                if visit(describe(message)):
                    await message.ack()
                if stop():
                    break
        finally:
            await channel.close()
