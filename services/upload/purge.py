"""Purge job: removes soft-deleted documents once their retention period is over.

Every upload replica runs one, like the outbox relay; they need no coordination: each document is
purged in its own transaction under FOR UPDATE SKIP LOCKED (see DocumentService.purge_expired), so
two replicas never purge the same document or free its quota twice.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import Counter

from services.common.context import new_request_id, request_id_var

from .service import DocumentService

log = logging.getLogger(__name__)

PURGED = Counter("doctag_documents_purged_total", "Soft-deleted documents purged after their retention period")
PURGE_ERRORS = Counter("doctag_purge_errors_total", "Purge job passes that failed")


class PurgeJob:
    def __init__(self, service: DocumentService, *, interval_seconds: float, batch_size: int) -> None:
        self.service = service
        self.interval_seconds = interval_seconds
        self.batch_size = batch_size
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="purge-job")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task:
            await self._task

    async def run_once(self) -> int:
        """Purges every expired document, batch after batch; returns how many. One request id per
        pass, so its audit entries can be found together."""
        request_id_var.set(new_request_id())
        total = 0
        while True:
            purged = await self.service.purge_expired(limit=self.batch_size)
            total += purged
            PURGED.inc(purged)
            if purged < self.batch_size:
                break
        if total:
            log.info("purged deleted documents past retention", extra={"documents": total})
        return total

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except Exception as exc:  # noqa: BLE001 - keep purging after any failure
                PURGE_ERRORS.inc()
                log.warning("purge job error; retrying next interval", extra={"error": f"{type(exc).__name__}: {exc}"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.interval_seconds)
