"""The real tagging worker against real RabbitMQ and controlled gRPC peers on real sockets.

The Documents and ModelServing servicers here are under the test's control (they
keep state in memory, answer like upload/model-serving do and can be told to
fail); tests/e2e covers the real chain. Each test gets its own
queue prefix and a low delivery limit; the topology is deleted afterwards.
"""
from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aio_pika
import grpc
import httpx
import numpy as np
import pytest

from services.common.access import CAPABILITY_KEY
from services.common.amqp import DOCUMENT_UPLOADED, Topology, message_id
from services.common.capability import CapabilitySigner, CapabilityVerifier
from services.common.context import GRPC_REQUEST_ID_KEY
from services.common.embeddings import pack
from services.common.grpc_utils import add_health, bind, create_server, set_serving
from services.common.pb import (
    documents_pb2,
    documents_pb2_grpc,
    model_serving_pb2,
    model_serving_pb2_grpc,
)
from services.common.settings import CommonSettings
from services.tagging_worker.app import build_http_app
from services.tagging_worker.clients import MODEL_HEALTH_SERVICE
from services.tagging_worker.extractors.pdf import NO_TEXT_LAYER
from services.tagging_worker.metrics import DEFERRAL_LIMIT_FAILURES, DEFERRALS, JOBS
from services.tagging_worker.settings import WorkerSettings
from services.tagging_worker.worker import TaggingWorker
from tests.conftest import AMQP_URL, SAMPLES
from tests.support import grpc_security, pdf_without_text

pytestmark = pytest.mark.integration

Outcome = documents_pb2.TaggingOutcome
REPO = Path(__file__).resolve().parents[2]
DELIVERY_LIMIT = 3
KOREAN = "행정안전부는 공공기관 문서의 자동 분류 시스템을 도입한다. 예산과 인사 관련 문서가 많다."


# -- controlled peers --------------------------------------------------------------------------


@dataclass
class StoredDocument:
    tenant_id: str
    content: bytes
    filename: str
    content_type: str
    status: str = "queued"
    error: str = ""
    text: str = ""
    tags: list[documents_pb2.Tag] = field(default_factory=list)
    # (detected_format, extractor, page_count, section_count) of the final RecordTaggingResult
    extraction: tuple[str, str, int, int] = ("", "", 0, 0)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


class ControlledDocuments(documents_pb2_grpc.DocumentsServicer):
    """Behaves like upload's Documents service: idempotent results, version check, 404 for others."""

    def __init__(self) -> None:
        self.docs: dict[str, StoredDocument] = {}
        self.calls: list[tuple[str, str, int]] = []   # (method, document_id, outcome)
        self.request_ids: list[str] = []
        # outcome → how many more calls with it answer UNAVAILABLE
        self.unavailable: dict[int, int] = {}

    def add(self, content: bytes, filename: str, content_type: str = "", tenant_id: str | None = None) -> str:
        doc_id = str(uuid.uuid4())
        self.docs[doc_id] = StoredDocument(tenant_id or str(uuid.uuid4()), content, filename, content_type)
        return doc_id

    def _find(self, context: grpc.aio.ServicerContext, document_id: str) -> StoredDocument | None:
        """As upload does: the tenant is the one of the job capability that came with the call."""
        token = dict(context.invocation_metadata()).get(CAPABILITY_KEY)
        cap = CapabilityVerifier(CommonSettings().capability_public_key_path).verify_for(token, document_id)
        doc = self.docs.get(document_id)
        return doc if doc is not None and doc.tenant_id == cap.tenant_id else None

    async def ReadContent(self, request, context):
        self.request_ids.append(dict(context.invocation_metadata()).get(GRPC_REQUEST_ID_KEY, ""))
        self.calls.append(("ReadContent", request.document_id, 0))
        doc = self._find(context, request.document_id)
        if doc is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "document not found")
        step = 16 * 1024
        for offset in range(0, max(len(doc.content), 1), step):
            chunk = documents_pb2.ContentChunk(data=doc.content[offset:offset + step])
            if offset == 0:
                chunk.filename, chunk.content_type = doc.filename, doc.content_type
                chunk.size_bytes, chunk.sha256 = len(doc.content), doc.sha256
            yield chunk

    async def RecordTaggingResult(self, request, context):
        self.request_ids.append(dict(context.invocation_metadata()).get(GRPC_REQUEST_ID_KEY, ""))
        self.calls.append(("RecordTaggingResult", request.document_id, request.outcome))
        if self.unavailable.get(request.outcome, 0) > 0:
            self.unavailable[request.outcome] -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "database failover in progress")
        doc = self._find(context, request.document_id)
        if doc is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "document not found")
        if request.content_sha256 != doc.sha256:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not the current content version")
        if doc.status in ("tagged", "failed"):
            return documents_pb2.RecordTaggingResultResponse(status=doc.status, applied=False)
        if request.outcome in (Outcome.TAGGING_OUTCOME_TAGGED, Outcome.TAGGING_OUTCOME_FAILED):
            doc.extraction = (request.detected_format, request.extractor, request.page_count, request.section_count)
        if request.outcome == Outcome.TAGGING_OUTCOME_PROCESSING:
            applied = doc.status != "processing"
            doc.status = "processing"
        elif request.outcome == Outcome.TAGGING_OUTCOME_TAGGED:
            doc.status, doc.text, doc.tags, applied = "tagged", request.text, list(request.tags), True
        elif request.outcome == Outcome.TAGGING_OUTCOME_FAILED:
            doc.status, doc.error, applied = "failed", request.error, True
        else:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "outcome is required")
        return documents_pb2.RecordTaggingResultResponse(status=doc.status, applied=applied)

    def count(self, method: str, outcome: int = 0) -> int:
        return sum(1 for m, _, o in self.calls if m == method and (outcome == 0 or o == outcome))


class ControlledModel(model_serving_pb2_grpc.ModelServingServicer):
    """Tags by keyword; can answer UNAVAILABLE for its next n calls or fail every call."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.embedded: list[tuple[int, str]] = []   # (mode, text) of Embed calls
        self.unavailable_next = 0
        self.always: grpc.StatusCode | None = None
        self.hold: asyncio.Event | None = None

    async def Predict(self, request, context):
        self.texts.append(request.text)
        if self.hold is not None:
            await self.hold.wait()
        if self.always is not None:
            await context.abort(self.always, "model crashed on this input")
        if self.unavailable_next > 0:
            self.unavailable_next -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "model is loading")
        tags = [model_serving_pb2.TagScore(tag="행정", score=0.9)]
        if "예산" in request.text:
            tags.append(model_serving_pb2.TagScore(tag="예산", score=0.6))
        return model_serving_pb2.PredictResponse(model="kobert-doctag", version="3",
                                                 prediction=model_serving_pb2.Prediction(tags=tags))

    async def Embed(self, request, context):
        """A unit vector per text, derived from the text (the same text, the same vector)."""
        self.embedded.extend((request.mode, t) for t in request.texts)
        return model_serving_pb2.EmbedResponse(model="test-e5@0", version="passage/test", dim=EMBED_DIM,
                                               embeddings=[model_serving_pb2.Embedding(vector=pack(keyed_vector(t)))
                                                           for t in request.texts])


EMBED_DIM = 8


def keyed_vector(text: str) -> np.ndarray:
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big"))
    v = rng.standard_normal(EMBED_DIM).astype(np.float32)
    return v / np.linalg.norm(v)


@dataclass
class Peers:
    documents: ControlledDocuments
    model: ControlledModel
    documents_target: str
    model_target: str
    model_health: Any = None   # the model server's grpc.health.v1 servicer


@pytest.fixture
async def peers() -> AsyncIterator[Peers]:
    documents, model = ControlledDocuments(), ControlledModel()
    doc_server = create_server("test-upload", grpc_security("upload"))
    model_server = create_server("test-model", grpc_security("model-serving"))
    documents_pb2_grpc.add_DocumentsServicer_to_server(documents, doc_server)
    model_serving_pb2_grpc.add_ModelServingServicer_to_server(model, model_server)
    add_health(doc_server, [])
    model_health = add_health(model_server, [])
    doc_port = bind(doc_server, "127.0.0.1:0", grpc_security("upload"))
    model_port = bind(model_server, "127.0.0.1:0", grpc_security("model-serving"))
    await doc_server.start()
    await model_server.start()
    yield Peers(documents, model, f"127.0.0.1:{doc_port}", f"127.0.0.1:{model_port}", model_health)
    await doc_server.stop(0)
    await model_server.stop(0)


@pytest.fixture
async def broker(amqp_prefix: str) -> AsyncIterator[tuple[aio_pika.abc.AbstractChannel, Topology]]:
    topology = Topology(prefix=f"{amqp_prefix}-{uuid.uuid4().hex[:6]}", delivery_limit=DELIVERY_LIMIT)
    connection = await aio_pika.connect_robust(AMQP_URL)
    channel = await connection.channel()
    await topology.declare(channel)
    yield channel, topology
    await topology.delete(channel)
    await connection.close()


@pytest.fixture
def settings(peers: Peers, broker: tuple[aio_pika.abc.AbstractChannel, Topology]) -> WorkerSettings:
    return WorkerSettings(
        amqp_url=AMQP_URL, amqp_prefix=broker[1].prefix, delivery_limit=DELIVERY_LIMIT,
        documents_grpc_target=peers.documents_target, model_grpc_target=peers.model_target,
        retry_attempts=3, retry_initial_seconds=0.05, retry_max_seconds=0.2,
        documents_timeout_seconds=5, model_timeout_seconds=5, read_timeout_seconds=10,
        extract_timeout_seconds=30, shutdown_grace_seconds=5,
        # Deferrals: 0.05 s, 0.1 s, 0.2 s, 0.2 s ...; more of them allowed than deliveries.
        model_unavailable_retry_seconds=0.05, model_unavailable_retry_max_seconds=0.2,
        model_unavailable_max_deferrals=4 * DELIVERY_LIMIT,
    )


@pytest.fixture
async def worker(settings: WorkerSettings) -> AsyncIterator[TaggingWorker]:
    tagging_worker = TaggingWorker(settings)
    await tagging_worker.start()
    yield tagging_worker
    await tagging_worker.stop()


# -- helpers -----------------------------------------------------------------------------------


async def publish(channel: aio_pika.abc.AbstractChannel, topology: Topology, documents: ControlledDocuments,
                  doc_id: str) -> str:
    doc = documents.docs[doc_id]
    body = {"event": DOCUMENT_UPLOADED, "document_id": doc_id, "tenant_id": doc.tenant_id, "sha256": doc.sha256,
            "filename": doc.filename, "content_type": doc.content_type, "size_bytes": len(doc.content),
            "uploaded_at": "2024-05-01T00:00:00Z",
            "capability": CapabilitySigner(CommonSettings().capability_private_key_path, 3600).sign(
                doc_id, doc.tenant_id, doc.sha256)}
    mid = message_id(doc_id, doc.sha256)
    exchange = await channel.get_exchange(topology.events_exchange)
    await exchange.publish(aio_pika.Message(json.dumps(body).encode(), message_id=mid, content_type="application/json",
                                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                           routing_key=DOCUMENT_UPLOADED)
    return mid


async def wait_for(predicate: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = 20.0) -> None:
    """Polls `predicate` (sync or async) until it is true; fails naming `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)  # poll interval


async def take_all(channel: aio_pika.abc.AbstractChannel, queue: str,
                   wait_for_one: bool = False) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Takes (and acks) every message waiting in `queue`; with `wait_for_one`, first waits until
    one is there (failing after 10 s). Reads messages rather than the declare-ok message count,
    which RabbitMQ 3.10 does not keep current for quorum queues."""
    declared = await channel.declare_queue(queue, passive=True)
    taken: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def drain() -> bool:
        while (message := await declared.get(fail=False, no_ack=False)) is not None:
            await message.ack()
            taken.append(message)
        return bool(taken)

    if wait_for_one:
        await wait_for(drain, f"a message in {queue}", timeout=10)
    else:
        await drain()
    return taken


async def wait_idle(worker: TaggingWorker) -> None:
    await wait_for(lambda: worker.in_flight == 0, "the worker to settle every delivery it holds")


# -- tests -------------------------------------------------------------------------------------


async def test_job_is_tagged_then_acked(worker, peers, broker) -> None:
    channel, topology = broker
    docs = peers.documents
    doc_id = docs.add(KOREAN.encode("cp949"), "보고서.txt", "text/plain")
    mid = await publish(channel, topology, docs, doc_id)

    await wait_for(lambda: docs.docs[doc_id].status == "tagged", "the document to be tagged")
    await wait_idle(worker)
    doc = docs.docs[doc_id]
    assert doc.text == KOREAN
    assert doc.extraction == ("txt", "text", 0, 0)
    assert [(t.tag, round(t.score, 2), t.source, t.model_name, t.model_version) for t in doc.tags] == [
        ("행정", 0.9, "model", "kobert-doctag", "3"), ("예산", 0.6, "model", "kobert-doctag", "3")]
    assert [(m, o) for m, _, o in docs.calls] == [
        ("RecordTaggingResult", Outcome.TAGGING_OUTCOME_PROCESSING), ("ReadContent", 0),
        ("RecordTaggingResult", Outcome.TAGGING_OUTCOME_TAGGED)]
    assert peers.model.texts == [KOREAN]
    assert set(docs.request_ids) == {mid}  # the message id travels as request id
    await worker.stop()  # unacked messages would return to the queue now
    assert await take_all(channel, topology.jobs_queue) == []
    assert await take_all(channel, topology.dead_letter_queue) == []


async def test_ack_only_after_the_result_was_recorded(worker, peers, broker) -> None:
    channel, topology = broker
    docs = peers.documents
    doc_id = docs.add(KOREAN.encode(), "a.txt")
    # The TAGGED write fails for longer than the in-handler retries (3 attempts): the
    # first delivery must not be acked, so the broker redelivers and the second one records it.
    docs.unavailable[Outcome.TAGGING_OUTCOME_TAGGED] = 3
    await publish(channel, topology, docs, doc_id)

    await wait_for(lambda: docs.docs[doc_id].status == "tagged", "the document to be tagged")
    await wait_idle(worker)
    assert docs.count("RecordTaggingResult", Outcome.TAGGING_OUTCOME_PROCESSING) == 2  # two deliveries
    assert docs.count("RecordTaggingResult", Outcome.TAGGING_OUTCOME_TAGGED) == 4
    await worker.stop()
    assert await take_all(channel, topology.jobs_queue) == []
    assert await take_all(channel, topology.dead_letter_queue) == []


async def test_corrupt_file_fails_readably_and_the_worker_goes_on(worker, peers, broker) -> None:
    channel, topology = broker
    docs = peers.documents
    corrupt = docs.add(b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R", "깨진.pdf", "application/pdf")
    hwp = docs.add(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600), "문서.hwp", "application/x-hwp")
    good = docs.add(KOREAN.encode(), "좋은.txt", "text/plain")
    for doc_id in (corrupt, hwp, good):
        await publish(channel, topology, docs, doc_id)

    await wait_for(lambda: all(docs.docs[d].status in ("tagged", "failed") for d in (corrupt, hwp, good)),
                   "all three documents to be final")
    assert docs.docs[corrupt].status == "failed"
    assert docs.docs[corrupt].error.startswith("the PDF file is damaged: ")
    assert docs.docs[hwp].status == "failed"
    assert docs.docs[hwp].error.startswith("the HWP file is damaged: ")
    assert docs.docs[good].status == "tagged"
    assert len(peers.model.texts) == 1  # failed files never reach the model


@pytest.mark.skipif(not (SAMPLES / "hwp").is_dir(), reason="shared samples not available")
async def test_hwp_and_hwpx_documents_are_tagged_or_fail_with_their_reason(worker, peers, broker) -> None:
    channel, topology = broker
    docs = peers.documents
    hwp = SAMPLES / "hwp" / "hwplib__distribution.hwp"
    hwpx = SAMPLES / "hwpx" / "hwpxlib__textextractor__multipara.hwpx"
    password = SAMPLES / "hwp" / "pyhwp__password-12345.hwp"
    ids = [docs.add(hwp.read_bytes(), hwp.name, "application/x-hwp"),
           docs.add(hwpx.read_bytes(), hwpx.name, "application/hwp+zip"),
           docs.add(password.read_bytes(), password.name, "application/x-hwp")]
    for doc_id in ids:
        await publish(channel, topology, docs, doc_id)

    await wait_for(lambda: all(docs.docs[d].status in ("tagged", "failed") for d in ids), "the documents to be final")
    assert [docs.docs[d].status for d in ids] == ["tagged", "tagged", "failed"]
    assert "encrypted (password-protected)" in docs.docs[ids[2]].error
    olefile = f"hwp/olefile {version('olefile')}"
    assert [docs.docs[d].extraction for d in ids] == [
        ("hwp", olefile, 0, 1), ("hwpx", f"hwpx/lxml {version('lxml')}", 0, 1), ("hwp", olefile, 0, 0)]
    assert sorted(text[:9] for text in peers.model.texts) == ["'어썸킴' 김하성", "강남세움복지관 공"]


async def test_document_without_text_fails(worker, peers, broker) -> None:
    """A scan-like PDF fails because it has no text layer; a text file of blanks because it has no text."""
    channel, topology = broker
    docs = peers.documents
    scan_id = docs.add(pdf_without_text(), "scan.pdf", "application/pdf")
    blank_id = docs.add(b" \r\n\t\n", "blank.txt", "text/plain")
    for doc_id in (scan_id, blank_id):
        await publish(channel, topology, docs, doc_id)
    await wait_for(lambda: docs.docs[scan_id].status == docs.docs[blank_id].status == "failed",
                   "the documents to be failed")
    assert docs.docs[scan_id].error == NO_TEXT_LAYER
    assert docs.docs[blank_id].error == "no text could be extracted"
    assert docs.docs[scan_id].extraction == ("pdf", f"pdf/pypdfium2 {version('pypdfium2')}", 0, 0)
    assert docs.docs[blank_id].extraction == ("txt", "text", 0, 0)


async def test_model_unavailable_for_a_while_is_retried(worker, peers, broker) -> None:
    channel, topology = broker
    docs = peers.documents
    peers.model.unavailable_next = 2
    doc_id = docs.add(KOREAN.encode(), "a.txt")
    await publish(channel, topology, docs, doc_id)

    await wait_for(lambda: docs.docs[doc_id].status == "tagged", "the document to be tagged")
    assert len(peers.model.texts) == 3
    assert docs.count("RecordTaggingResult", Outcome.TAGGING_OUTCOME_PROCESSING) == 1  # within one delivery


def _deferred() -> float:
    return JOBS.labels("deferred")._value.get()


async def test_model_not_ready_keeps_the_document_queued_beyond_the_delivery_limit(worker, peers, broker) -> None:
    channel, topology = broker
    docs = peers.documents
    await set_serving(peers.model_health, [MODEL_HEALTH_SERVICE], False)  # model-serving up, no model loaded
    doc_id = docs.add(KOREAN.encode(), "a.txt")
    before = _deferred()
    await publish(channel, topology, docs, doc_id)

    # More rounds than the delivery limit allows deliveries: none of them may count against it.
    await wait_for(lambda: _deferred() >= before + DELIVERY_LIMIT + 2, f"{DELIVERY_LIMIT + 2} deferrals")
    assert docs.docs[doc_id].status == "queued"
    assert docs.calls == []  # the document was never touched while the model was away
    assert peers.model.texts == []

    await set_serving(peers.model_health, [MODEL_HEALTH_SERVICE], True)
    await wait_for(lambda: docs.docs[doc_id].status == "tagged", "the document to be tagged")
    await wait_idle(worker)
    assert docs.count("RecordTaggingResult", Outcome.TAGGING_OUTCOME_PROCESSING) == 1
    await worker.stop()
    assert await take_all(channel, topology.jobs_queue) == []
    assert await take_all(channel, topology.dead_letter_queue) == []


async def test_model_overloaded_beyond_retries_is_deferred_not_failed(worker, peers, broker) -> None:
    channel, topology = broker
    docs = peers.documents
    peers.model.always = grpc.StatusCode.RESOURCE_EXHAUSTED
    doc_id = docs.add(KOREAN.encode(), "a.txt")
    before = _deferred()
    await publish(channel, topology, docs, doc_id)

    await wait_for(lambda: _deferred() >= before + DELIVERY_LIMIT + 1, f"{DELIVERY_LIMIT + 1} deferrals")
    assert docs.docs[doc_id].status != "failed"
    peers.model.always = None
    await wait_for(lambda: docs.docs[doc_id].status == "tagged", "the document to be tagged")
    await wait_idle(worker)
    assert docs.count("RecordTaggingResult", Outcome.TAGGING_OUTCOME_FAILED) == 0
    await worker.stop()
    assert await take_all(channel, topology.jobs_queue) == []
    assert await take_all(channel, topology.dead_letter_queue) == []


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _metric(text: str, name: str) -> float:
    """The value of an unlabelled sample in a Prometheus text exposition."""
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not exposed")


async def test_model_serving_down_fails_the_document_after_the_deferral_limit(settings, peers, broker,
                                                                                caplog) -> None:
    """model-serving is down (nothing listens on its port): the job is deferred with a growing wait,
    at most `model_unavailable_max_deferrals` times, then the document is failed with a readable reason."""
    channel, topology = broker
    docs = peers.documents
    limited = settings.model_copy(update={"model_grpc_target": f"127.0.0.1:{_closed_port()}",
                                          "model_unavailable_max_deferrals": 3})
    tagging_worker = TaggingWorker(limited)
    await tagging_worker.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_http_app(tagging_worker)),
                                     base_url="http://worker") as client:
            before = await client.get("/metrics")
            doc_id = docs.add(KOREAN.encode(), "a.txt")
            with caplog.at_level("WARNING", logger="services.tagging_worker.worker"):
                await publish(channel, topology, docs, doc_id)
                await wait_for(lambda: docs.docs[doc_id].status == "failed", "the document to be failed")
                await wait_idle(tagging_worker)
            after = await client.get("/metrics")
    finally:
        await tagging_worker.stop()

    error = docs.docs[doc_id].error
    assert error.startswith("model-serving unavailable after 4 attempts (last error: UNAVAILABLE: "), error
    # Never touched before: it stayed `queued` while deferred, then the one FAILED write.
    assert docs.calls == [("RecordTaggingResult", doc_id, Outcome.TAGGING_OUTCOME_FAILED)]
    waits = [r.retry_in_s for r in caplog.records if r.getMessage() == "model-serving unavailable, job deferred"]
    assert waits == [0.05, 0.1, 0.2]  # exponential back-off, capped at retry_max_seconds
    for name, grew_by in (("doctag_tagging_deferrals_total", 3), ("doctag_tagging_deferral_limit_failures_total", 1)):
        assert _metric(after.text, name) - _metric(before.text, name) == grew_by, name
    assert await take_all(channel, topology.jobs_queue) == []        # acked, not re-published again
    assert await take_all(channel, topology.dead_letter_queue) == []


async def test_model_back_before_the_deferral_limit_tags_the_document(settings, peers, broker, caplog) -> None:
    """model-serving comes back while the job waits out its last allowed deferral: the next attempt
    tags it and nothing is failed."""
    channel, topology = broker
    docs = peers.documents
    await set_serving(peers.model_health, [MODEL_HEALTH_SERVICE], False)
    tagging_worker = TaggingWorker(settings.model_copy(update={
        "model_unavailable_max_deferrals": 2, "model_unavailable_retry_seconds": 1.5,
        "model_unavailable_retry_max_seconds": 10.0}))  # the second wait (3 s) leaves time to switch
    await tagging_worker.start()
    deferrals, failures = DEFERRALS._value.get(), DEFERRAL_LIMIT_FAILURES._value.get()

    def waiting(deferral: int) -> bool:
        return any(getattr(r, "deferral", None) == deferral for r in caplog.records)

    try:
        with caplog.at_level("WARNING", logger="services.tagging_worker.worker"):
            doc_id = docs.add(KOREAN.encode(), "a.txt")
            await publish(channel, topology, docs, doc_id)
            await wait_for(lambda: waiting(2), "the job to wait out its second (last allowed) deferral")
            await set_serving(peers.model_health, [MODEL_HEALTH_SERVICE], True)
            await wait_for(lambda: docs.docs[doc_id].status == "tagged", "the document to be tagged")
            await wait_idle(tagging_worker)
    finally:
        await tagging_worker.stop()
    assert DEFERRALS._value.get() == deferrals + 2
    assert DEFERRAL_LIMIT_FAILURES._value.get() == failures
    assert docs.count("RecordTaggingResult", Outcome.TAGGING_OUTCOME_FAILED) == 0
    assert await take_all(channel, topology.jobs_queue) == []


async def test_poison_message_goes_to_the_dead_letter_queue(worker, peers, broker) -> None:
    channel, topology = broker
    exchange = await channel.get_exchange(topology.events_exchange)
    await exchange.publish(aio_pika.Message(b"{not json", message_id="poison-1"), routing_key=DOCUMENT_UPLOADED)
    docs = peers.documents
    doc_id = docs.add(KOREAN.encode(), "a.txt")
    await publish(channel, topology, docs, doc_id)

    await wait_for(lambda: docs.docs[doc_id].status == "tagged", "the document to be tagged")
    dead = await take_all(channel, topology.dead_letter_queue, wait_for_one=True)
    assert [(m.body, m.message_id) for m in dead] == [(b"{not json", "poison-1")]


async def test_job_that_keeps_failing_is_recorded_failed_and_dead_lettered(worker, peers, broker) -> None:
    channel, topology = broker
    docs = peers.documents
    peers.model.always = grpc.StatusCode.INTERNAL  # not transient: every delivery fails at once
    doc_id = docs.add(KOREAN.encode(), "a.txt")
    await publish(channel, topology, docs, doc_id)

    await wait_for(lambda: docs.docs[doc_id].status == "failed", "the document to be failed")
    await wait_idle(worker)
    assert docs.docs[doc_id].error == "processing failed repeatedly: INTERNAL: model crashed on this input"
    assert len(peers.model.texts) == DELIVERY_LIMIT  # one call per delivery, never more
    dead = await take_all(channel, topology.dead_letter_queue, wait_for_one=True)
    assert [json.loads(m.body)["document_id"] for m in dead] == [doc_id]
    assert await take_all(channel, topology.jobs_queue) == []


async def test_redelivered_job_ends_in_the_same_final_state(worker, peers, broker) -> None:
    channel, topology = broker
    docs = peers.documents
    tagged = docs.add(KOREAN.encode(), "a.txt")
    failed = docs.add(b"not a pdf", "b.pdf")
    for doc_id in (tagged, failed):
        await publish(channel, topology, docs, doc_id)
    await wait_for(lambda: docs.docs[tagged].status == "tagged" and docs.docs[failed].status == "failed",
                   "one document tagged and one failed")
    await wait_idle(worker)
    before = {d: (docs.docs[d].status, docs.docs[d].text, docs.docs[d].error, list(docs.docs[d].tags))
              for d in (tagged, failed)}
    calls_before = len(docs.calls)

    for doc_id in (tagged, failed):  # the relay sends the same message again (same message id)
        await publish(channel, topology, docs, doc_id)
    await wait_for(lambda: len(docs.calls) >= calls_before + 2, "both repeated jobs to reach upload")
    await wait_idle(worker)
    after = {d: (docs.docs[d].status, docs.docs[d].text, docs.docs[d].error, list(docs.docs[d].tags))
             for d in (tagged, failed)}
    assert after == before
    assert docs.docs[failed].error == "not a valid PDF file"
    # The repeat stops at PROCESSING, which answers "already final": no second read or prediction.
    assert sorted(docs.calls[calls_before:]) == sorted(
        ("RecordTaggingResult", d, Outcome.TAGGING_OUTCOME_PROCESSING) for d in (tagged, failed))
    assert len(peers.model.texts) == 1
    await worker.stop()
    assert await take_all(channel, topology.jobs_queue) == []


async def test_deleted_or_replaced_documents_are_acked(worker, peers, broker) -> None:
    channel, topology = broker
    docs = peers.documents
    deleted = docs.add(KOREAN.encode(), "a.txt")
    replaced = docs.add(KOREAN.encode(), "b.txt")
    await publish(channel, topology, docs, deleted)
    del docs.docs[deleted]
    await publish(channel, topology, docs, replaced)
    docs.docs[replaced].content = "새 버전의 내용".encode()  # a newer version was uploaded meanwhile
    await wait_for(lambda: docs.count("RecordTaggingResult") >= 2, "both jobs to reach upload")
    await wait_idle(worker)
    assert docs.docs[replaced].status == "queued"  # the stale job changed nothing
    assert peers.model.texts == []
    await worker.stop()
    assert await take_all(channel, topology.jobs_queue) == []
    assert await take_all(channel, topology.dead_letter_queue) == []


async def test_shutdown_returns_unfinished_jobs_to_the_queue(settings, peers, broker) -> None:
    channel, topology = broker
    docs = peers.documents
    peers.model.hold = asyncio.Event()
    doc_id = docs.add(KOREAN.encode(), "a.txt")
    tagging_worker = TaggingWorker(settings.model_copy(update={"shutdown_grace_seconds": 0.3}))
    await tagging_worker.start()
    try:
        await publish(channel, topology, docs, doc_id)
        await wait_for(lambda: len(peers.model.texts) == 1, "the job to be in flight, blocked in Predict")
    finally:
        await tagging_worker.stop()
        peers.model.hold.set()
    assert docs.docs[doc_id].status == "processing"
    back = await take_all(channel, topology.jobs_queue, wait_for_one=True)  # back for another worker
    assert [json.loads(m.body)["document_id"] for m in back] == [doc_id]


async def test_http_health_readiness_and_metrics(worker, peers, broker) -> None:
    app = build_http_app(worker)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://worker") as client:
        assert (await client.get("/healthz")).json()["status"] == "ok"
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"amqp": "ok", "grpc": "ok"}

        channel, topology = broker
        doc_id = peers.documents.add(KOREAN.encode(), "a.txt")
        await publish(channel, topology, peers.documents, doc_id)
        await wait_for(lambda: peers.documents.docs[doc_id].status == "tagged", "the document to be tagged")
        await wait_idle(worker)
        metrics = (await client.get("/metrics")).text
        assert 'doctag_tagging_jobs_total{outcome="tagged"}' in metrics
        assert "doctag_tagging_job_duration_seconds_bucket" in metrics
        assert 'doctag_tagging_extraction_duration_seconds_count{result="ok"}' in metrics
        assert "doctag_tagging_jobs_in_flight 0.0" in metrics

        await worker.stop()
        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["checks"]["amqp"].startswith("unavailable")


async def test_runs_as_a_process_and_stops_on_sigterm(peers, broker) -> None:
    """`python -m services.tagging_worker`, configured only by DOCTAG_* variables."""
    channel, topology = broker
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        http_port = sock.getsockname()[1]
    env = {**os.environ, "DOCTAG_AMQP_URL": AMQP_URL, "DOCTAG_AMQP_PREFIX": topology.prefix,
           "DOCTAG_DELIVERY_LIMIT": str(DELIVERY_LIMIT), "DOCTAG_HTTP_PORT": str(http_port),
           "DOCTAG_DOCUMENTS_GRPC_TARGET": peers.documents_target, "DOCTAG_MODEL_GRPC_TARGET": peers.model_target}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.tagging_worker", cwd=str(REPO), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as client:
            async def ready() -> bool:
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            async def handled() -> bool:
                # Counted in the same synchronous step that logs "job handled", after the ack.
                return 'doctag_tagging_jobs_total{outcome="tagged"} 1.0' in (await client.get("/metrics")).text

            await wait_for(ready, "the worker process to answer /readyz with 200")
            docs = peers.documents
            doc_id = docs.add(KOREAN.encode(), "a.txt")
            mid = await publish(channel, topology, docs, doc_id)
            await wait_for(lambda: docs.docs[doc_id].status == "tagged", "the document to be tagged")
            await wait_for(handled, "the worker to count (and log) the job as handled")
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, output.decode(errors="replace")[-3000:]
    records = [json.loads(line) for line in output.decode().splitlines() if line.startswith("{")]
    handled = [r for r in records if r.get("message") == "job handled"]
    assert handled and handled[0]["outcome"] == "tagged"
    assert handled[0]["request_id"] == mid and handled[0]["tenant_id"] == docs.docs[doc_id].tenant_id
    assert any(r.get("message") == "tagging worker stopped" for r in records)
