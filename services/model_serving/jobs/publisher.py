"""Publishes training jobs to RabbitMQ from model-serving (one robust connection, opened on first use)."""
from __future__ import annotations

import asyncio

import aio_pika
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection

from services.common.training_queue import TrainingTopology, publish_job


class JobPublisher:
    def __init__(self, url: str, topology: TrainingTopology, *, declare: bool) -> None:
        self.url = url
        self.topology = topology
        self.declare = declare
        self.connection: AbstractRobustConnection | None = None
        self.channel: AbstractRobustChannel | None = None
        self._lock = asyncio.Lock()

    async def _channel(self) -> AbstractRobustChannel:
        async with self._lock:
            if self.channel is None:
                self.connection = await aio_pika.connect_robust(self.url, timeout=5)
                self.channel = await self.connection.channel()   # publisher confirms on
                await self.topology.open(self.channel, declare=self.declare)
            return self.channel

    async def __call__(self, job_id: str, priority: str) -> None:
        await publish_job(await self._channel(), self.topology, job_id, priority)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
