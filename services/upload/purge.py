"""Purge job: removes soft-deleted documents once their retention period is over.

Every upload replica runs one, like the outbox relay; they need no coordination: each document is
purged in its own transaction under FOR UPDATE SKIP LOCKED (see DocumentService.purge_expired), so
two replicas never purge the same document or free its quota twice.
"""
from __future__ import annotations

import logging

from prometheus_client import Counter

from services.common.context import new_request_id, request_id_var

from .periodic import PeriodicJob
from .service import DocumentService

log = logging.getLogger(__name__)

PURGED = Counter("doctag_documents_purged_total", "Soft-deleted documents purged after their retention period")
PURGE_ERRORS = Counter("doctag_purge_errors_total", "Purge job passes that failed")


class PurgeJob(PeriodicJob):
    name = "purge-job"

    def __init__(self, service: DocumentService, *, interval_seconds: float, batch_size: int) -> None:
        super().__init__(interval_seconds=interval_seconds, errors=PURGE_ERRORS)
        self.service = service
        self.batch_size = batch_size

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
