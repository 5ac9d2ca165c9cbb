"""Wiring of the upload service: HTTP app, gRPC server, outbox relay, purge job."""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import Gauge

from services.common.amqp import Topology
from services.common.analyser_warmup import AnalyserWarmUp
from services.common.auth import TokenVerifier
from services.common.blobstore import BlobStore
from services.common.capability import CapabilitySigner
from services.common.db import Database
from services.common.http import create_app

from .dead_letters import DeadLetters
from .http_api import build_router
from .purge import PurgeJob
from .queue_api import build_queue_router
from .relay import OutboxRelay
from .service import DocumentService
from .settings import UploadSettings
from .storage_quotas import StorageQuotas, build_storage_quota_router
from .tagging_queue import TaggingQueue
from .term_stats import TermStatsJob

ANALYSER_LOAD_SECONDS = Gauge("doctag_upload_analyser_load_seconds",
                              "Time the Korean analyser (indexing) took to load and analyse its first text")


class UploadComponents:
    """Everything one upload replica runs, built from settings."""

    def __init__(self, settings: UploadSettings) -> None:
        self.settings = settings
        self.db = Database(settings.dsn(), min_size=settings.db_pool_min, max_size=settings.db_pool_max)
        self.blobs = BlobStore(settings.blob_root)
        self.relay: OutboxRelay | None = None
        if settings.relay_enabled:
            relay_db = Database(settings.dsn(user=settings.relay_db_user, password=settings.relay_password()),
                                min_size=1, max_size=2)
            self.relay = OutboxRelay(relay_db, settings.amqp_connection_url, Topology(prefix=settings.amqp_prefix),
                                     poll_seconds=settings.relay_poll_seconds, batch_size=settings.relay_batch_size,
                                     max_in_flight=settings.relay_tenant_max_in_flight,
                                     in_flight_timeout=settings.relay_in_flight_timeout_seconds,
                                     declare_topology=settings.amqp_declare_topology,
                                     signer=CapabilitySigner(settings.capability_private_key_path,
                                                             settings.job_capability_ttl_seconds))
        self.service = DocumentService(settings, self.db, self.blobs,
                                       on_outbox_write=self.relay.wake if self.relay else (lambda: None))
        self.purge_job: PurgeJob | None = None
        if settings.purge_enabled:
            self.purge_job = PurgeJob(self.service, interval_seconds=settings.purge_interval_seconds,
                                      batch_size=settings.purge_batch_size)
        self.term_stats_job: TermStatsJob | None = None
        if settings.term_stats_enabled:
            self.term_stats_job = TermStatsJob(self.db, interval_seconds=settings.term_stats_interval_seconds,
                                               min_documents=settings.term_stats_min_documents,
                                               min_postings=settings.term_stats_min_postings,
                                               slack=settings.term_stats_slack)
        # The tagging queue screen's broker side: its own small connection, made on first use.
        self.dead_letters = DeadLetters(settings.amqp_connection_url, Topology(prefix=settings.amqp_prefix))
        self.queue = TaggingQueue(self.service, self.db, self.dead_letters,
                                  stalled_after_s=settings.relay_in_flight_timeout_seconds)
        self.verifier = TokenVerifier(settings.public_key_path, settings.jwt_issuer, settings.jwt_audience)
        # Titles are indexed at upload and texts when a tagging result comes in: the analyser
        # is loaded before the replica says it is ready, not by the first upload.
        self.analyser = AnalyserWarmUp(on_loaded=ANALYSER_LOAD_SECONDS.set)

    async def start(self) -> None:
        self.analyser.start()
        await self.db.open()
        if self.relay:
            await self.relay.db.open()
            await self.relay.start()
        if self.purge_job:
            await self.purge_job.start()
        if self.term_stats_job:
            await self.term_stats_job.start()

    async def stop(self) -> None:
        if self.purge_job:
            await self.purge_job.stop()
        if self.term_stats_job:
            await self.term_stats_job.stop()
        if self.relay:
            await self.relay.stop()
            await self.relay.db.close()
        await self.dead_letters.close()
        await self.db.close()
        await self.analyser.close()

    async def check_database(self) -> None:
        await self.db.ping()

    async def check_blob_store(self) -> None:
        probe = self.blobs.incoming / ".ready-probe"
        probe.write_bytes(b"ok")
        probe.unlink()

    async def check_broker(self) -> None:
        if self.relay and not self.relay.connected:
            raise RuntimeError("not connected to RabbitMQ")


def build_http_app(components: UploadComponents, *, manage_lifecycle: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            await components.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await components.stop()

    settings = components.settings
    app = create_app("upload", title="doctag upload", lifespan=lifespan, readiness={
        "database": components.check_database, "blob_store": components.check_blob_store,
        "rabbitmq": components.check_broker, "analyser": components.analyser.check},
        max_body_bytes=settings.max_request_bytes,
        body_limits={"/api/v1/documents": settings.documents_max_request_bytes}, api_docs=settings.api_docs)
    app.include_router(build_router(components.service, components.verifier))
    app.include_router(build_queue_router(components.queue, components.verifier))
    app.include_router(build_storage_quota_router(StorageQuotas(components.service), components.verifier))
    return app
