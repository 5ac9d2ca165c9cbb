"""gRPC clients of the worker's two peers, with deadlines, request ids and retries.

Only transient failures (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, and a
content read that did not match its checksum) are retried here, with bounded
exponential backoff; everything else reaches the job handler at once.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from services.common import embeddings
from services.common.access import CAPABILITY_KEY
from services.common.context import grpc_metadata
from services.common.embeddings import Embedding
from services.common.pb import (
    documents_pb2,
    documents_pb2_grpc,
    model_serving_pb2,
    model_serving_pb2_grpc,
)
from services.common.tls import ReloadingChannel

from .extractors import Extracted, ExtractionError
from .job import Job
from .metrics import GRPC_RETRIES
from .settings import WorkerSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                             grpc.StatusCode.RESOURCE_EXHAUSTED})
Outcome = documents_pb2.TaggingOutcome


class ContentMismatch(Exception):
    """The bytes read do not hash to the sha256 they were stored under (a broken transfer)."""


class DocumentTooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the file is too large to extract text from ({size} bytes; the limit is {limit} bytes)")


@dataclass(frozen=True)
class Content:
    data: bytes
    filename: str
    content_type: str
    stored_sha256: str   # what upload says this content version is ("" when it did not say)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ContentMismatch):
        return True
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in TRANSIENT_CODES


def describe_error(exc: BaseException) -> str:
    """A short, readable description of a failure, for logs and the FAILED reason."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details() or 'no details'}"[:400]
    return f"{exc.__class__.__name__}: {exc}"[:400]


class Retrier:
    def __init__(self, settings: WorkerSettings) -> None:
        self.attempts = max(1, settings.retry_attempts)
        self.initial = settings.retry_initial_seconds
        self.maximum = settings.retry_max_seconds

    async def call(self, method: str, fn: Callable[[], Awaitable[T]]) -> T:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else exc.__class__.__name__
            GRPC_RETRIES.labels(method, code).inc()
            log.warning("transient failure, retrying",
                        extra={"method": method, "attempt": state.attempt_number,
                               "error": describe_error(exc) if exc else ""})

        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.initial, min=self.initial, max=self.maximum),
            retry=retry_if_exception(is_transient),
            before_sleep=before_sleep,
            reraise=True,
        ):
            with attempt:
                return await fn()
        raise AssertionError("unreachable")  # pragma: no cover


def job_metadata(job: Job) -> tuple[tuple[str, str], ...]:
    """The request id and the job's capability (upload verifies it; the tenant is the capability's)."""
    return (*grpc_metadata(), (CAPABILITY_KEY, job.capability))


class DocumentsClient:
    def __init__(self, channel: ReloadingChannel, settings: WorkerSettings, retrier: Retrier) -> None:
        self._channel = channel
        self._settings = settings
        self._retrier = retrier

    @property
    def _stub(self) -> documents_pb2_grpc.DocumentsStub:
        # A stub per call is cheap; the channel underneath is long-lived (replaced only on certificate renewal).
        return documents_pb2_grpc.DocumentsStub(self._channel.get())  # type: ignore[no-untyped-call]

    async def record(self, job: Job, outcome: documents_pb2.TaggingOutcome, *, text: str = "",
                     tags: list[documents_pb2.Tag] | None = None, error: str = "",
                     pii_counts: dict[str, int] | None = None,
                     extraction: Extracted | ExtractionError | None = None,
                     embedding: Embedding | None = None,
                     ) -> documents_pb2.RecordTaggingResultResponse:
        """Reports the job's outcome; `pii_counts` the personal data found per kind (tagged only);
        `extraction` adds what the extractor learnt about the file (a failed extraction knows the
        format and extractor once the format was decided)."""
        request = documents_pb2.RecordTaggingResultRequest(
            document_id=job.document_id, content_sha256=job.sha256,
            outcome=outcome, text=text, tags=tags or [], error=error[:1000], pii_counts=pii_counts or {})
        if extraction is not None:
            request.detected_format = extraction.format or ""
            request.extractor = extraction.extractor or ""
        if embedding is not None:
            request.embedding = embedding.vector
            request.embedding_model = embedding.model
            request.embedding_version = embedding.version
        if isinstance(extraction, Extracted):
            request.page_count = extraction.pages or 0
            request.section_count = extraction.sections or 0
        return await self._retrier.call("RecordTaggingResult", lambda: self._stub.RecordTaggingResult(
            request, timeout=self._settings.documents_timeout_seconds, metadata=job_metadata(job)))

    async def read_content(self, job: Job) -> Content:
        return await self._retrier.call("ReadContent", lambda: self._read_once(job))

    async def _read_once(self, job: Job) -> Content:
        limit = self._settings.max_document_bytes
        call = self._stub.ReadContent(
            documents_pb2.ReadContentRequest(document_id=job.document_id),
            timeout=self._settings.read_timeout_seconds, metadata=job_metadata(job))
        hasher = hashlib.sha256()
        parts: list[bytes] = []
        total = 0
        first: documents_pb2.ContentChunk | None = None
        try:
            async for chunk in call:
                if first is None:
                    first = chunk
                    if chunk.size_bytes > limit:
                        raise DocumentTooLarge(chunk.size_bytes, limit)
                    if chunk.sha256 and chunk.sha256.lower() != job.sha256:
                        break  # another content version: the caller skips this job
                total += len(chunk.data)
                if total > limit:
                    raise DocumentTooLarge(total, limit)
                hasher.update(chunk.data)
                parts.append(chunk.data)
        finally:
            call.cancel()  # no-op when the stream ended; frees the server when we stopped early
        stored = (first.sha256.lower() if first is not None else "")
        if stored and stored != job.sha256:
            return Content(b"", first.filename, first.content_type, stored)  # type: ignore[union-attr]
        if hasher.hexdigest() != job.sha256:
            raise ContentMismatch(f"the content read ({total} bytes) does not match its sha256")
        filename = first.filename if first is not None and first.filename else job.filename
        content_type = first.content_type if first is not None and first.content_type else job.content_type
        return Content(b"".join(parts), filename, content_type, stored or job.sha256)


@dataclass(frozen=True)
class Prediction:
    model: str
    version: str
    tags: list[tuple[str, float]]


class ModelUnavailable(Exception):
    """model-serving cannot predict now (not ready, down or overloaded): the job waits, it does not fail."""


# What model-serving's health service reports as serving once a model is loaded.
MODEL_HEALTH_SERVICE = model_serving_pb2.DESCRIPTOR.services_by_name["ModelServing"].full_name
MODEL_WAIT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
# Embed is not served by this model-serving: tag without an embedding.
EMBED_OFF_CODES = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED})


class ModelClient:
    def __init__(self, channel: ReloadingChannel, settings: WorkerSettings, retrier: Retrier) -> None:
        self._channel = channel
        self._settings = settings
        self._retrier = retrier

    @property
    def _stub(self) -> model_serving_pb2_grpc.ModelServingStub:
        return model_serving_pb2_grpc.ModelServingStub(self._channel.get())  # type: ignore[no-untyped-call]

    @property
    def _health(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self._channel.get())

    async def check_ready(self) -> None:
        """Raises ModelUnavailable when model-serving is down or says it is not serving.

        A peer without health information for the service (NOT_FOUND, UNIMPLEMENTED) is
        not held up: Predict's own answer decides then.
        """
        try:
            response = await self._health.Check(health_pb2.HealthCheckRequest(service=MODEL_HEALTH_SERVICE),
                                                timeout=min(5.0, self._settings.model_timeout_seconds),
                                                metadata=grpc_metadata())
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise ModelUnavailable(describe_error(exc)) from exc
            return
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            raise ModelUnavailable("model-serving is not ready (no model loaded)")

    async def predict(self, text: str, job: Job) -> Prediction:
        """Tags `text`; the job's capability tells model-serving the tenant (for its inference log)."""
        request = model_serving_pb2.PredictRequest(text=text[: self._settings.model_max_chars],
                                                   top_k=self._settings.model_top_k)
        try:
            response = await self._retrier.call("Predict", lambda: self._stub.Predict(
                request, timeout=self._settings.model_timeout_seconds, metadata=job_metadata(job)))
        except grpc.aio.AioRpcError as exc:
            if exc.code() in MODEL_WAIT_CODES:
                raise ModelUnavailable(describe_error(exc)) from exc
            raise
        return Prediction(model=response.model, version=response.version,
                          tags=[(t.tag, t.score) for t in response.prediction.tags])

    async def embed_passage(self, text: str, job: Job | None = None) -> Embedding | None:
        """The document's passage embedding for semantic search, or None when this model-serving does
        not serve embeddings (switched off, failed to load, or older): the document is then tagged
        and searchable by its words, and `doctag search reindex` adds the embedding later. While
        model-serving is down or overloaded the job waits (ModelUnavailable), as for Predict."""
        request = model_serving_pb2.EmbedRequest(texts=[text[: self._settings.model_max_chars]],
                                                 mode=model_serving_pb2.EMBED_MODE_PASSAGE)
        metadata = job_metadata(job) if job is not None else grpc_metadata()
        try:
            response = await self._retrier.call("Embed", lambda: self._stub.Embed(
                request, timeout=self._settings.model_timeout_seconds, metadata=metadata))
        except grpc.aio.AioRpcError as exc:
            if exc.code() in MODEL_WAIT_CODES:
                raise ModelUnavailable(describe_error(exc)) from exc
            if exc.code() in EMBED_OFF_CODES:
                log.warning("no embedding for the document", extra={"error": describe_error(exc)})
                return None
            raise
        return embeddings.checked(response.model, response.version, response.embeddings[0].vector)
