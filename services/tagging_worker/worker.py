"""The job consumer: one `document.uploaded` message → text + tags recorded with upload.

Per job: RecordTaggingResult(PROCESSING) → ReadContent → extract (child process)
→ Predict → personal-data counts (services.common.pii) → RecordTaggingResult(TAGGED | FAILED,
with the extraction metadata: format, extractor, page/section count) → ack. The message is acked only
after upload confirmed the final write, so a crash anywhere means redelivery, and
every step is idempotent on upload's side (same content version → same state).

Failure handling:
- the file cannot be read as text → FAILED with the extractor's reason, ack;
- NOT_FOUND (document deleted) / FAILED_PRECONDITION (not the current content
  version) from upload → nothing left to do, ack;
- model-serving not ready (checked before the document is touched), down, or still
  UNAVAILABLE / RESOURCE_EXHAUSTED after the in-handler retries → the job is deferred: it
  waits (DOCTAG_MODEL_UNAVAILABLE_RETRY_SECONDS, doubling per deferral up to
  DOCTAG_MODEL_UNAVAILABLE_RETRY_MAX_SECONDS) and goes back to the end of the queue as a
  fresh message, so no delivery of its limit is used up. The `doctag-deferrals` header
  counts the deferrals; after DOCTAG_MODEL_UNAVAILABLE_MAX_DEFERRALS of them the document is
  recorded FAILED ("model-serving unavailable after N attempts ...") and the message acked;
- transient gRPC failures are retried in the handler (clients.Retrier); when they
  persist, or anything unexpected happens, the message is requeued; on its last
  allowed delivery the document is recorded FAILED and the message dead-lettered;
- a message that is not a valid job → rejected to the dead-letter queue.
"""
from __future__ import annotations

import asyncio
import logging
import time

import aio_pika
import grpc
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from services.common.amqp import Topology
from services.common.context import request_id_var, tenant_id_var
from services.common.grpc_utils import GrpcSecurity, client_channel
from services.common.pb import documents_pb2
from services.common.pii import count_pii

from . import queue_depth
from .clients import (
    Content,
    DocumentsClient,
    DocumentTooLarge,
    ModelClient,
    ModelUnavailable,
    Retrier,
    describe_error,
)
from .extractors import Extracted, ExtractionError, Limits
from .extractors.isolated import IsolatedExtractor
from .job import (
    DEFERRALS_HEADER,
    InvalidJob,
    Job,
    deferral_count,
    deferral_delay,
    delivery_count,
    is_last_delivery,
)
from .metrics import (
    DEFERRAL_LIMIT_FAILURES,
    DEFERRALS,
    EXTRACTION_DURATION,
    IN_FLIGHT,
    JOB_DURATION,
    JOBS,
    REDELIVERIES,
)
from .settings import WorkerSettings

log = logging.getLogger(__name__)

Outcome = documents_pb2.TaggingOutcome
FINAL_STATUSES = frozenset({"tagged", "failed"})
NO_TEXT = "no text could be extracted"
# Upload answers these when the job no longer applies; the message is done.
GONE_CODES = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION})


class TaggingWorker:
    def __init__(self, settings: WorkerSettings, extractor: IsolatedExtractor | None = None) -> None:
        self.settings = settings
        self.topology = Topology(prefix=settings.amqp_prefix, delivery_limit=settings.delivery_limit)
        self.extractor = extractor or IsolatedExtractor(
            Limits(max_pages=settings.extract_max_pages, max_chars=settings.extract_max_chars),
            settings.extract_timeout_seconds, memory_limit_mb=settings.extract_memory_limit_mb)
        retrier = Retrier(settings)
        security = GrpcSecurity.from_settings(settings)
        self.documents_channel = client_channel(settings.documents_grpc_target, security, "upload")
        self.model_channel = client_channel(settings.model_grpc_target, security, "model-serving")
        self.documents = DocumentsClient(self.documents_channel, settings, retrier)
        self.model = ModelClient(self.model_channel, settings, retrier)
        self.connection: AbstractRobustConnection | None = None
        self.channel: AbstractRobustChannel | None = None
        self.queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._depth_task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.extractor.warm_up)
        self.connection = await aio_pika.connect_robust(self.settings.amqp_connection_url)
        self.channel = await self.connection.channel()
        await self.channel.set_qos(prefetch_count=self.settings.prefetch)
        _, self.queue = await self.topology.open(self.channel, declare=self.settings.amqp_declare_topology)
        self._consumer_tag = await self.queue.consume(self._on_message, no_ack=False)
        log.info("consuming", extra={"queue": self.topology.jobs_queue, "prefetch": self.settings.prefetch})
        if self.settings.queue_metrics_interval_seconds > 0:
            self._depth_task = asyncio.create_task(queue_depth.run(
                self.connection, (self.topology.jobs_queue, self.topology.dead_letter_queue),
                self.settings.queue_metrics_interval_seconds))

    async def stop(self) -> None:
        """Stops consuming, lets in-flight jobs finish (within the grace period), closes everything."""
        if self._depth_task is not None:
            self._depth_task.cancel()
            await asyncio.gather(self._depth_task, return_exceptions=True)
            self._depth_task = None
        if self.queue is not None and self._consumer_tag is not None:
            try:
                await self.queue.cancel(self._consumer_tag)
            except Exception:  # the channel may be gone already
                log.warning("could not cancel the consumer", exc_info=True)
            self._consumer_tag = None
        if self._tasks:
            log.info("waiting for in-flight jobs", extra={"jobs": len(self._tasks)})
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.settings.shutdown_grace_seconds)
            for task in pending:
                task.cancel()  # the handler nacks its message back to the queue
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if self.connection is not None:
            await self.connection.close()
        await self.documents_channel.close()
        await self.model_channel.close()
        await asyncio.to_thread(self.extractor.close)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def check_amqp(self) -> None:
        if self.connection is None or self.connection.is_closed or self.channel is None or self.channel.is_closed:
            raise RuntimeError("AMQP channel is not open")

    async def check_grpc(self) -> None:
        for name, source in (("documents", self.documents_channel), ("model", self.model_channel)):
            channel = source.get()
            if channel.get_state(try_to_connect=True) != grpc.ChannelConnectivity.READY:
                try:
                    await asyncio.wait_for(channel.channel_ready(), timeout=2.0)
                except TimeoutError as exc:
                    raise RuntimeError(f"{name} gRPC channel is not ready") from exc

    # -- one message -----------------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        IN_FLIGHT.inc()  # held unacknowledged from now until its handler has settled it
        task = asyncio.create_task(self.handle(message))
        self._tasks.add(task)
        task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        IN_FLIGHT.dec()

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """Handles one delivery and settles it (ack, nack-requeue or reject) exactly once."""
        request_id_var.set(message.message_id or message.correlation_id or None)
        tenant_id_var.set(None)
        if message.redelivered:
            REDELIVERIES.inc()
        try:
            job = Job.from_body(message.body)
        except InvalidJob as exc:
            log.error("invalid job message, dead-lettering it",
                      extra={"message_id": message.message_id, "reason": str(exc)})
            JOBS.labels("rejected").inc()
            await _settle(message.reject(requeue=False))
            return
        if not message.message_id:
            request_id_var.set(job.document_id)
        tenant_id_var.set(job.tenant_id)

        count = delivery_count(message.headers)
        start = time.perf_counter()
        outcome = "requeued"
        try:
            outcome = await self.process(job)
            await _settle(message.ack())
        except ModelUnavailable as exc:
            outcome = await self._defer(message, job, count, exc)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in GONE_CODES:
                log.info("job no longer applies", extra={"document_id": job.document_id, "code": exc.code().name})
                outcome = "skipped"
                await _settle(message.ack())
            else:
                outcome = await self._give_back(message, job, count, exc)
        except asyncio.CancelledError:
            log.warning("shutting down: job returned to the queue", extra={"document_id": job.document_id})
            await asyncio.shield(_settle(message.nack(requeue=True)))
            raise
        except Exception as exc:  # noqa: BLE001 - any failure: retry via the queue, bounded
            outcome = await self._give_back(message, job, count, exc)
        finally:
            elapsed = time.perf_counter() - start
            JOBS.labels(outcome).inc()
            JOB_DURATION.labels(outcome).observe(elapsed)
            log.info("job handled", extra={"document_id": job.document_id, "outcome": outcome,
                                           "delivery_count": count, "redelivered": bool(message.redelivered),
                                           "duration_ms": round(elapsed * 1000, 1)})

    async def _give_back(self, message: AbstractIncomingMessage, job: Job, count: int, exc: BaseException) -> str:
        """Requeues the job, or on its last allowed delivery records FAILED and dead-letters it."""
        reason = describe_error(exc)
        if not is_last_delivery(count, self.settings.delivery_limit):
            log.warning("job failed, requeueing", extra={"document_id": job.document_id, "delivery_count": count,
                                                         "error": reason}, exc_info=not _expected(exc))
            await _settle(message.nack(requeue=True))
            return "requeued"
        log.error("job failed on its last delivery, dead-lettering it",
                  extra={"document_id": job.document_id, "delivery_count": count, "error": reason},
                  exc_info=not _expected(exc))
        try:
            await self.documents.record(job, Outcome.TAGGING_OUTCOME_FAILED,
                                        error=f"processing failed repeatedly: {reason}")
        except Exception as record_exc:  # noqa: BLE001 - the message still goes to the DLQ for an operator
            log.error("could not record the failure", extra={"document_id": job.document_id,
                                                             "error": describe_error(record_exc)})
        await _settle(message.reject(requeue=False))
        return "dead_lettered"

    async def _defer(self, message: AbstractIncomingMessage, job: Job, count: int, exc: ModelUnavailable) -> str:
        """Waits, then puts a fresh copy of the job at the end of the queue and acks this delivery;
        past the deferral limit, records the document FAILED instead.

        A requeue (nack) would count against the delivery limit and end in FAILED after a few
        seconds of model-serving downtime; a new message starts its count at zero, and the
        `doctag-deferrals` header bounds the deferrals instead. Published before the ack, so a
        crash in between can only duplicate the job (idempotent), never lose it.
        """
        deferrals = deferral_count(message.headers)
        if deferrals >= self.settings.model_unavailable_max_deferrals:
            return await self._fail_model_unavailable(message, job, count, deferrals + 1, exc)
        delay = deferral_delay(deferrals, self.settings.model_unavailable_retry_seconds,
                               self.settings.model_unavailable_retry_max_seconds)
        log.warning("model-serving unavailable, job deferred",
                    extra={"document_id": job.document_id, "retry_in_s": delay, "deferral": deferrals + 1,
                           "max_deferrals": self.settings.model_unavailable_max_deferrals, "error": str(exc)})
        await asyncio.sleep(delay)  # holds a prefetch slot: the worker slows down while the model is away
        headers = {k: v for k, v in (message.headers or {}).items() if not str(k).startswith("x-")}
        headers[DEFERRALS_HEADER] = deferrals + 1
        try:
            if self.channel is None:
                raise RuntimeError("no AMQP channel")
            await self.channel.default_exchange.publish(
                aio_pika.Message(message.body, message_id=message.message_id, correlation_id=message.correlation_id,
                                 content_type=message.content_type, headers=headers,
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=self.topology.jobs_queue)
        except Exception:  # fall back to a plain requeue
            log.warning("could not re-publish the deferred job; requeueing it", exc_info=True,
                        extra={"document_id": job.document_id})
            await _settle(message.nack(requeue=True))
            return "requeued"
        await _settle(message.ack())
        DEFERRALS.inc()
        return "deferred"

    async def _fail_model_unavailable(self, message: AbstractIncomingMessage, job: Job, count: int, attempts: int,
                                      exc: ModelUnavailable) -> str:
        """Records the document FAILED with a readable reason and acks: the deferral limit is reached."""
        reason = f"model-serving unavailable after {attempts} attempts (last error: {exc})"
        log.error("model-serving stayed unavailable, giving the job up",
                  extra={"document_id": job.document_id, "attempts": attempts, "error": str(exc)})
        try:
            recorded = await self.documents.record(job, Outcome.TAGGING_OUTCOME_FAILED, error=reason)
        except grpc.aio.AioRpcError as record_exc:
            if record_exc.code() in GONE_CODES:
                await _settle(message.ack())
                return "skipped"
            return await self._give_back(message, job, count, record_exc)
        except Exception as record_exc:  # noqa: BLE001 - retried via the queue, bounded by the delivery limit
            return await self._give_back(message, job, count, record_exc)
        await _settle(message.ack())
        if not recorded.applied:  # another delivery of the job finished it meanwhile
            return "skipped"
        DEFERRAL_LIMIT_FAILURES.inc()
        return "failed"

    async def process(self, job: Job) -> str:
        """Runs the job to its final state; returns the outcome label. gRPC errors propagate."""
        await self.model.check_ready()  # before the document is touched: it stays `queued` while the model is away
        started = await self.documents.record(job, Outcome.TAGGING_OUTCOME_PROCESSING)
        if not started.applied and started.status in FINAL_STATUSES:
            log.info("document already final", extra={"document_id": job.document_id, "status": started.status})
            return "skipped"
        try:
            content = await self.documents.read_content(job)
        except DocumentTooLarge as exc:
            await self.documents.record(job, Outcome.TAGGING_OUTCOME_FAILED, error=str(exc))
            return "failed"
        if content.stored_sha256 != job.sha256:
            log.info("the document has newer content; this job is stale", extra={"document_id": job.document_id})
            return "skipped"

        extracted = await self._extract(job, content)
        if isinstance(extracted, ExtractionError):
            await self.documents.record(job, Outcome.TAGGING_OUTCOME_FAILED, error=extracted.reason,
                                        extraction=extracted)
            return "failed"
        if not extracted.text.strip():
            await self.documents.record(job, Outcome.TAGGING_OUTCOME_FAILED, error=NO_TEXT, extraction=extracted)
            return "failed"

        prediction = await self.model.predict(extracted.text, job)
        # The passage embedding for semantic search (None when model-serving does not serve Embed).
        embedding = await self.model.embed_passage(passage_text(job.title, extracted.text), job)
        tags = [documents_pb2.Tag(tag=label, score=score, source="model", model_name=prediction.model,
                                  model_version=prediction.version) for label, score in prediction.tags]
        # Counts only (never the values) travel with the result; a thread keeps long texts off the loop.
        pii_counts = await asyncio.to_thread(count_pii, extracted.text)
        if pii_counts:
            log.info("personal data found", extra={"document_id": job.document_id, "pii": pii_counts})
        await self.documents.record(job, Outcome.TAGGING_OUTCOME_TAGGED, text=extracted.text, tags=tags,
                                    pii_counts=pii_counts, extraction=extracted, embedding=embedding)
        return "tagged"

    async def _extract(self, job: Job, content: Content) -> Extracted | ExtractionError:
        start = time.perf_counter()
        try:
            extracted = await self.extractor.extract(content.data, content.filename, content.content_type)
        except ExtractionError as exc:
            EXTRACTION_DURATION.labels("error").observe(time.perf_counter() - start)
            log.info("text extraction failed", extra={"document_id": job.document_id, "reason": exc.reason})
            return exc
        EXTRACTION_DURATION.labels("ok").observe(time.perf_counter() - start)
        return extracted


def passage_text(title: str, text: str) -> str:
    """What a document's embedding reads: its title, then its text (the embedder reads the start)."""
    return f"{title}\n{text}" if title.strip() else text


def _expected(exc: BaseException) -> bool:
    """gRPC failures are expected operational events (no traceback in the log); bugs are not."""
    return isinstance(exc, grpc.aio.AioRpcError)


async def _settle(settle_coro) -> None:  # type: ignore[no-untyped-def]
    """Acks/nacks/rejects; a channel lost meanwhile means the broker redelivers anyway."""
    try:
        await settle_coro
    except Exception:
        log.warning("could not settle the message (channel closed?); the broker will redeliver it", exc_info=True)
