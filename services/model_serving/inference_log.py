"""The inference log: one row per predicted text in `models.inference_log`, kept 30 days.

`record` never blocks a prediction: rows go into a bounded in-memory buffer that a
background task writes with COPY in batches. When the database is down the buffer
keeps what fits and drops (and counts) the rest rather than growing without bound.
A periodic purge removes rows older than the retention period. Only a SHA-256 of
each input is stored, never the text; should any text (or part of it) ever be logged here,
it must go through `services.common.pii.mask_pii`, the platform's one masking rule.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections import deque
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from prometheus_client import Counter, Gauge
from psycopg.types.json import Jsonb

from services.common.db import Database

log = logging.getLogger(__name__)

LOGGED = Counter("doctag_inference_log_rows_written_total", "Inference log rows written to the database")
DROPPED = Counter("doctag_inference_log_rows_dropped_total",
                  "Inference log rows dropped because the buffer was full (database down or slow)")
PURGED = Counter("doctag_inference_log_rows_purged_total", "Inference log rows removed by the retention purge")
BUFFERED = Gauge("doctag_inference_log_buffered_rows", "Inference log rows waiting to be written")

COLUMNS = ("at", "tenant_id", "model_name", "model_version", "latency_ms", "input_sha256", "tags", "request_id")
PURGE_BATCH = 50_000


def input_sha256(text: str) -> str:
    """The hex SHA-256 of a text's UTF-8 bytes: identifies an input without keeping it."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _tenant_uuid(tenant_id: str | None) -> uuid.UUID | None:
    if not tenant_id:
        return None
    try:
        return uuid.UUID(str(tenant_id))
    except ValueError:
        return None


class InferenceLog:
    def __init__(self, db: Database, *, retention_days: int = 30, flush_interval_s: float = 1.0,
                 batch_size: int = 5000, max_buffer: int = 100_000, purge_interval_s: float = 3600.0) -> None:
        self.db = db
        self.retention_days = retention_days
        self.flush_interval_s = flush_interval_s
        self.batch_size = max(1, batch_size)
        self.max_buffer = max(1, max_buffer)
        self.purge_interval_s = purge_interval_s
        self._rows: deque[tuple[Any, ...]] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.dropped = 0

    # -- producer side (called by the runner after each prediction) --------------------------
    def record(self, tenant_id: str | None, model: str, version: str, latency_ms: float,
               tags: list[list[tuple[str, float]]], input_sha256: list[str], request_id: str | None) -> None:
        """Queues one row per text; never blocks, never raises for a full buffer."""
        at = datetime.now(UTC)
        tenant = _tenant_uuid(tenant_id)
        rid = request_id[:128] if request_id else None
        for text_tags, digest in zip(tags, input_sha256, strict=True):
            if len(self._rows) >= self.max_buffer:
                self.dropped += 1
                DROPPED.inc()
                continue
            self._rows.append((at, tenant, model, str(version), float(latency_ms), digest,
                               Jsonb([[t, round(float(s), 6)] for t, s in text_tags]), rid))
        BUFFERED.set(len(self._rows))
        if len(self._rows) >= self.batch_size:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._rows)

    # -- background work --------------------------------------------------------------------
    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._flush_loop(), name="inference-log-flush"),
                           asyncio.create_task(self._purge_loop(), name="inference-log-purge")]

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stops the background tasks and writes what is buffered (best effort, for at most
        `timeout_s`: with the database down a connection would otherwise be awaited for 30 s)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        try:
            async with asyncio.timeout(timeout_s):
                while self._rows:
                    if await self.flush() == 0:
                        break
        except Exception as exc:  # noqa: BLE001 - shutting down: report what is lost
            log.warning("inference log rows lost at shutdown",
                        extra={"rows": len(self._rows), "error": f"{exc.__class__.__name__}: {exc}"})

    async def flush(self) -> int:
        """Writes up to one batch; returns the rows written. Rows stay buffered when it fails."""
        batch = list(islice(self._rows, self.batch_size))
        if not batch:
            return 0
        async with self.db.transaction() as conn, conn.cursor().copy(
                f"COPY models.inference_log ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in batch:
                await copy.write_row(row)
        for _ in batch:
            self._rows.popleft()
        BUFFERED.set(len(self._rows))
        LOGGED.inc(len(batch))
        return len(batch)

    async def purge(self) -> int:
        """Deletes rows older than the retention period, in batches; returns how many."""
        total = 0
        while True:
            async with self.db.transaction() as conn:
                cur = await conn.execute(
                    "DELETE FROM models.inference_log WHERE id IN (SELECT id FROM models.inference_log "
                    "WHERE at < now() - make_interval(days => %s) LIMIT %s)", (self.retention_days, PURGE_BATCH))
                deleted = cur.rowcount or 0
            total += deleted
            PURGED.inc(deleted)
            if deleted < PURGE_BATCH:
                return total

    async def _flush_loop(self) -> None:
        backoff = self.flush_interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            self._wake.clear()
            try:
                while await self.flush() == self.batch_size:
                    pass
                backoff = self.flush_interval_s
            except Exception as exc:  # noqa: BLE001 - the database is down: keep the rows, retry later
                backoff = min(max(backoff * 2, self.flush_interval_s), 30.0)
                log.warning("inference log could not be written; retrying",
                            extra={"buffered": len(self._rows), "dropped": self.dropped, "error": str(exc)[:300]})

    async def _purge_loop(self) -> None:
        while True:
            try:
                removed = await self.purge()
                if removed:
                    log.info("inference log purged", extra={"rows": removed, "retention_days": self.retention_days})
            except Exception as exc:  # noqa: BLE001 - try again next period
                log.warning("inference log purge failed", extra={"error": str(exc)[:300]})
            await asyncio.sleep(self.purge_interval_s)
