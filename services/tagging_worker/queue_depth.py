"""Queue depths for Prometheus: the jobs queue (backlog, KEDA's scaling signal) and the
dead-letter queue (jobs that kept failing), as the broker reports them.

Each poll opens its own short-lived channel and declares the queues passively (which needs no
permission on them), so a refusal or a missing queue closes that channel only, never the one
the worker consumes on. Every worker replica exports the same numbers; the rules take the max.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from aio_pika.abc import AbstractConnection

from .metrics import QUEUE_MESSAGES

log = logging.getLogger(__name__)


async def poll_once(connection: AbstractConnection, queues: Iterable[str]) -> dict[str, int]:
    """Messages ready in each queue; a queue the broker would not report is left out (and its
    series removed, so a stale number never looks current)."""
    depths: dict[str, int] = {}
    for name in queues:
        channel = await connection.channel()
        try:
            queue = await channel.declare_queue(name, passive=True)
            depths[name] = int(queue.declaration_result.message_count or 0)
        except Exception as exc:  # noqa: BLE001 - any refusal: report nothing for this queue
            log.warning("queue depth not available", extra={"queue": name, "error": str(exc)})
            with contextlib.suppress(KeyError):
                QUEUE_MESSAGES.remove(name)
            continue
        finally:
            if not channel.is_closed:
                await channel.close()
        QUEUE_MESSAGES.labels(name).set(depths[name])
    return depths


async def run(connection: AbstractConnection, queues: tuple[str, ...], interval: float) -> None:
    """Polls every `interval` seconds until cancelled."""
    while True:
        try:
            await poll_once(connection, queues)
        except Exception:
            log.warning("queue depth poll failed", exc_info=True)
        await asyncio.sleep(interval)
