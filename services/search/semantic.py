"""The semantic half of hybrid search: query vectors from model-serving, document vectors from PostgreSQL.

Query vectors: model-serving's `Embed` ("query: " + the query's words, base multilingual-e5-small),
with a short deadline. When model-serving is down, slow or does not serve Embed, search answers by
words alone and says why (`SemanticUnavailable`); after a failure it does not ask again for
`embed_retry_s`, so an outage costs each query nothing. Recent query vectors are cached (a next
page or a repeated query costs no model call).

Document vectors: PostgreSQL (`documents.document_embeddings`, written at tagging time) is the
source of truth; each replica keeps the vectors of the tenants it serves in memory
(`VectorCache`) and scores a query against all of them exactly (one matrix-vector product).
The cache reads only what changed since its last look (`updated_at`), at most every
`vector_refresh_s`, and is rebuilt whole every `vector_full_reload_s` (which drops purged
documents); documents deleted meanwhile are never returned, because every semantic candidate
is checked again by the SQL statement (row-level security, deleted documents hidden from the
search role, the request's filters).

Why exact scoring instead of an ANN index: exact is simple, needs no index to keep in step with
PostgreSQL, and is fast enough for a department's documents: 384 float32 values per document,
so 100,000 documents are 154 MB and one product over them takes milliseconds. Far larger tenants
would want an ANN index (hnswlib or usearch, rebuilt from the same table): not built here.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import grpc
import numpy as np

from services.common.context import grpc_metadata
from services.common.db import Database
from services.common.embeddings import unpack
from services.common.grpc_utils import GrpcSecurity, client_channel
from services.common.pb import model_serving_pb2, model_serving_pb2_grpc

from .query import Fusion, Semantic
from .vectors import VectorCache, top_similar

log = logging.getLogger(__name__)

QUERY_CACHE_SIZE = 1024


class SemanticUnavailable(Exception):
    """No query vector now; the message says why (shown to the caller as the degraded reason)."""


@dataclass(frozen=True)
class QueryVector:
    model: str
    vector: np.ndarray


class QueryEncoder:
    """Query vectors from model-serving's Embed, with a deadline, a cache and a pause after failures."""

    def __init__(self, target: str, security: GrpcSecurity | None, *, timeout_s: float, retry_after_s: float) -> None:
        # A long-lived channel with search's certificate (mutual TLS; rebuilt when it is renewed).
        self._channel = client_channel(target, security, "model-serving")
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._cache: OrderedDict[str, QueryVector] = OrderedDict()
        self._paused_until = 0.0
        self._reason = ""

    async def encode(self, text: str, tenant_id: str) -> QueryVector:
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        if time.monotonic() < self._paused_until:
            raise SemanticUnavailable(self._reason)
        request = model_serving_pb2.EmbedRequest(texts=[text], mode=model_serving_pb2.EMBED_MODE_QUERY,
                                                 tenant_id=tenant_id)
        try:
            stub = model_serving_pb2_grpc.ModelServingStub(self._channel.get())  # type: ignore[no-untyped-call]
            response = await stub.Embed(request, timeout=self.timeout_s, metadata=grpc_metadata())
        except grpc.aio.AioRpcError as exc:
            self._reason = _reason(exc)
            self._paused_until = time.monotonic() + self.retry_after_s
            log.warning("query embedding unavailable; searching by words only",
                        extra={"error": f"{exc.code().name}: {exc.details()}", "pause_s": self.retry_after_s})
            raise SemanticUnavailable(self._reason) from None
        result = QueryVector(response.model, unpack(response.embeddings[0].vector).copy())
        self._cache[text] = result
        if len(self._cache) > QUERY_CACHE_SIZE:
            self._cache.popitem(last=False)
        return result

    async def close(self) -> None:
        await self._channel.close()


def _reason(exc: grpc.aio.AioRpcError) -> str:
    code = exc.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "model-serving did not embed the query in time"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return "model-serving is overloaded"
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED):
        return "model-serving does not serve query embeddings"
    return "model-serving is unavailable"


@dataclass
class SemanticSearch:
    """Query vector + the tenant's vectors -> the semantic ranking a hybrid search fuses in."""

    encoder: QueryEncoder
    cache: VectorCache
    candidates: int
    fusion: Fusion

    async def ranking(self, db: Database, tenant: str, text: str) -> Semantic:
        """The tenant's `candidates` documents most similar to `text`; SemanticUnavailable when there
        is no query vector or no document vector to compare it with."""
        query_vector = await self.encoder.encode(text, tenant)
        vectors = await self.cache.vectors(db, tenant, query_vector.model)
        if not len(vectors):
            raise SemanticUnavailable("no document of this department has an embedding yet")
        if vectors.dim != len(query_vector.vector):
            raise SemanticUnavailable("the stored document embeddings do not match the query model")
        ids, sims = await asyncio.to_thread(top_similar, vectors, query_vector.vector, self.candidates)
        return Semantic(tuple(ids), tuple(sims), self.fusion)

    async def close(self) -> None:
        await self.encoder.close()
