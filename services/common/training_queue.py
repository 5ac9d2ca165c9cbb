"""RabbitMQ topology of training jobs: model-serving publishes, the training worker consumes.

- `<prefix>.training.urgent` and `<prefix>.training.routine`: durable quorum queues with a delivery
  limit, dead-lettering to `<prefix>.training.dead` through `<prefix>.dlx`. Two queues because
  quorum queues of RabbitMQ 3.x keep no priorities: the worker always takes from `urgent` first
  (basic.get, one job at a time), so an urgent job never waits behind a routine one.
- a message is `{"job_id"}` with message id = job id; the job's state lives in PostgreSQL, so a
  redelivered or republished message of a job that is running or finished is recognised there.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue
from pamqp.common import FieldTable

from .amqp import DEFAULT_DELIVERY_LIMIT

PRIORITIES = ("urgent", "routine")


@dataclass(frozen=True)
class TrainingTopology:
    prefix: str = "doctag"
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT

    def queue(self, priority: str) -> str:
        if priority not in PRIORITIES:
            raise ValueError(f"unknown priority {priority!r}")
        return f"{self.prefix}.training.{priority}"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.prefix}.training.dead"

    def arguments(self) -> FieldTable:
        return {"x-queue-type": "quorum", "x-delivery-limit": self.delivery_limit,
                "x-dead-letter-exchange": self.dead_letter_exchange,
                "x-dead-letter-routing-key": self.dead_letter_queue}

    async def declare(self, channel: AbstractChannel) -> dict[str, AbstractQueue]:
        dlx = await channel.declare_exchange(self.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True)
        dead = await channel.declare_queue(self.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"})
        await dead.bind(dlx, routing_key=self.dead_letter_queue)
        return {p: await channel.declare_queue(self.queue(p), durable=True, arguments=self.arguments())
                for p in PRIORITIES}

    async def open(self, channel: AbstractChannel, *, declare: bool) -> dict[str, AbstractQueue]:
        if declare:
            return await self.declare(channel)
        return {p: await channel.get_queue(self.queue(p), ensure=True) for p in PRIORITIES}

    async def delete(self, channel: AbstractChannel) -> None:
        """Removes the queues (tests only)."""
        for name in (*[self.queue(p) for p in PRIORITIES], self.dead_letter_queue):
            await channel.queue_delete(name)


def job_message(job_id: str) -> aio_pika.Message:
    return aio_pika.Message(json.dumps({"job_id": job_id}).encode(), message_id=job_id,
                            content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)


async def publish_job(channel: AbstractChannel, topology: TrainingTopology, job_id: str, priority: str) -> None:
    """Publishes with the channel's publisher confirms (aio-pika waits for the broker's ack)."""
    await channel.default_exchange.publish(job_message(job_id), routing_key=topology.queue(priority))


async def dead_letter(channel: AbstractChannel, topology: TrainingTopology, job_id: str) -> None:
    await channel.default_exchange.publish(job_message(job_id), routing_key=topology.dead_letter_queue)
