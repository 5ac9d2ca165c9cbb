"""RabbitMQ topology for document events, declared in code at start-up.

- `<prefix>.events`: topic exchange for document events (`document.uploaded`, ...).
- `<prefix>.tagging.jobs`: durable quorum queue bound to `document.uploaded`, with a
  delivery limit; messages past it go to the dead-letter exchange.
- `<prefix>.dlx` / `<prefix>.tagging.dead`: where jobs that keep failing end, for an
  operator to inspect. Nothing is retried forever.
- `<prefix>.quota.warnings`: durable quorum queue bound to `quota.warning` (a tenant's storage
  use reached the warning threshold), for whatever notifies the department. It exists so the
  event is kept: the outbox relay publishes with confirms, and an unroutable message would be
  confirmed and dropped.

The same topology is written out for operators in infra/rabbitmq/definitions.json
(`doctag amqp definitions` regenerates it; a test checks it is current).
"""
from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue
from pamqp.common import FieldTable

DOCUMENT_UPLOADED = "document.uploaded"
QUOTA_WARNING = "quota.warning"
DEFAULT_DELIVERY_LIMIT = 5


@dataclass(frozen=True)
class Topology:
    prefix: str = "doctag"
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT

    @property
    def events_exchange(self) -> str:
        return f"{self.prefix}.events"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def jobs_queue(self) -> str:
        return f"{self.prefix}.tagging.jobs"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.prefix}.tagging.dead"

    @property
    def quota_warnings_queue(self) -> str:
        return f"{self.prefix}.quota.warnings"

    @property
    def jobs_queue_arguments(self) -> FieldTable:
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-dead-letter-routing-key": self.dead_letter_queue,
        }

    async def declare(self, channel: AbstractChannel) -> tuple[AbstractExchange, AbstractQueue]:
        """Declares everything (idempotent); returns the events exchange and the jobs queue."""
        events = await channel.declare_exchange(self.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        dlx = await channel.declare_exchange(self.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True)
        dead = await channel.declare_queue(self.dead_letter_queue, durable=True,
                                           arguments={"x-queue-type": "quorum"})
        await dead.bind(dlx, routing_key=self.dead_letter_queue)
        jobs = await channel.declare_queue(self.jobs_queue, durable=True, arguments=self.jobs_queue_arguments)
        await jobs.bind(events, routing_key=DOCUMENT_UPLOADED)
        warnings = await channel.declare_queue(self.quota_warnings_queue, durable=True,
                                               arguments={"x-queue-type": "quorum"})
        await warnings.bind(events, routing_key=QUOTA_WARNING)
        return events, jobs

    async def open(self, channel: AbstractChannel, *, declare: bool) -> tuple[AbstractExchange, AbstractQueue]:
        """The events exchange and the jobs queue: declared (`declare`), or only checked to exist
        (passive declarations, which need no `configure` permission), for users without it."""
        if declare:
            return await self.declare(channel)
        events = await channel.get_exchange(self.events_exchange, ensure=True)
        jobs = await channel.get_queue(self.jobs_queue, ensure=True)
        return events, jobs

    async def delete(self, channel: AbstractChannel) -> None:
        """Removes the topology (tests only)."""
        for queue in (self.jobs_queue, self.dead_letter_queue, self.quota_warnings_queue):
            await channel.queue_delete(queue)
        for exchange in (self.events_exchange, self.dead_letter_exchange):
            await channel.exchange_delete(exchange)

    def definitions(self) -> dict[str, object]:
        """The topology in RabbitMQ's definitions format (import with rabbitmqadmin/management)."""
        vhost = "/"
        return {
            "exchanges": [
                {"name": self.events_exchange, "vhost": vhost, "type": "topic", "durable": True,
                 "auto_delete": False, "internal": False, "arguments": {}},
                {"name": self.dead_letter_exchange, "vhost": vhost, "type": "direct", "durable": True,
                 "auto_delete": False, "internal": False, "arguments": {}},
            ],
            "queues": [
                {"name": self.jobs_queue, "vhost": vhost, "durable": True, "auto_delete": False,
                 "arguments": self.jobs_queue_arguments},
                {"name": self.dead_letter_queue, "vhost": vhost, "durable": True, "auto_delete": False,
                 "arguments": {"x-queue-type": "quorum"}},
                {"name": self.quota_warnings_queue, "vhost": vhost, "durable": True, "auto_delete": False,
                 "arguments": {"x-queue-type": "quorum"}},
            ],
            "bindings": [
                {"source": self.events_exchange, "vhost": vhost, "destination": self.jobs_queue,
                 "destination_type": "queue", "routing_key": DOCUMENT_UPLOADED, "arguments": {}},
                {"source": self.dead_letter_exchange, "vhost": vhost, "destination": self.dead_letter_queue,
                 "destination_type": "queue", "routing_key": self.dead_letter_queue, "arguments": {}},
                {"source": self.events_exchange, "vhost": vhost, "destination": self.quota_warnings_queue,
                 "destination_type": "queue", "routing_key": QUOTA_WARNING, "arguments": {}},
            ],
        }


def message_id(document_id: str, content_sha256: str) -> str:
    """Same id for every (re)delivery of one content version of one document."""
    return f"{document_id}:{content_sha256}"
