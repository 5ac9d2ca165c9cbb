"""The semantic half of hybrid search: query vectors from model-serving, document vectors from PostgreSQL.

Query vectors: model-serving's `Embed` ("query: " + the query's words, base multilingual-e5-small),
with a short deadline. When model-serving is down, slow or does not serve Embed, search answers by
words alone and says why (`SemanticUnavailable`); after a failure it does not ask again for
`embed_retry_s`, so an outage costs each query nothing. Recent query vectors are cached (a next
page or a repeated query costs no model call).

Document vectors: PostgreSQL (`documents.document_embeddings`, written at tagging time) is the
source of truth; each replica keeps the vectors of the tenants it serves in memory
(`vectors.VectorCache`). The cache reads only what changed since its last look (`updated_at`), at
most every `vector_refresh_s`; every `vector_full_reload_s` it drops purged documents, in the
background. Documents deleted meanwhile are never returned, because every semantic candidate is
checked again by the SQL statement (row-level security, deleted documents hidden from the search
role, the request's filters), so the in-memory set may hold stale ids.

Exact below `ann_threshold` (20,000) vectors, an HNSW index above it (`ann.AnnIndex`, usearch).
Exact scoring (one matrix-vector product) is perfect and costs 3-7 ms at 20,000 vectors, but grows
linearly: 9 ms at 100,000 and ~50 ms at 500,000 on one core, with 1.5 KB of float32 per vector.
Above the threshold the index is built in a worker thread while exact scoring answers; updates made
meanwhile are replayed into it, it replaces the float32 matrix, and is saved in the state dir
(`ann_store.py`) so that a restart does not build it again. The periodic reload prunes it in place
(ids only; no second index in memory) until a fifth of its keys are removed or replaced, then
rebuilds it in the background (float16 pages, no float32 matrix) and swaps.

Settings, measured with `python -m tests.search_ann_tune` on 20,000 real e5 passage vectors
(headlines, reviews, petitions) and 500 e5 query vectors (other headlines), one busy core:
- dtype f16: the same recall as f32 (recall@100 0.975 vs 0.975 at M=32, ef=200) at half the
  vector memory; i8 stops near 0.88 recall@100 whatever the expansion (e5's cosines are packed
  close together, and 8-bit steps reorder them).
- connectivity 32, expansion_search 300: recall@100 0.989 and recall@10 0.997 at 20,000, 0.6 ms
  a query; M=16 gives 0.979. Recall falls as a tenant grows (M=32, ef=300: 0.998 / 0.997 / 0.993 /
  0.989 at 2,500 / 5,000 / 10,000 / 20,000), about 0.3-0.5 points per doubling, so the wider graph
  keeps the 500,000-vector tenant's expected recall@100 above 0.95 where M=16 (0.5-0.8 points per
  doubling) would not: an extrapolation, real 500,000-vector data was not at hand.
- cost: 1,044 bytes per vector as saved (768 of f16 vector, the graph), about 1,290 in memory
  (resident growth measured at 100,000), plus ~160 for the id maps; exact holds 1,536 + ~160.
  Build: 22 s per 100,000 vectors on one core (expansion_add 128), so ~2 minutes at 500,000; a
  query 0.85 ms at 100,000 (exact: 9 ms).
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

from . import timing
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

    def has(self, text: str) -> bool:
        """Whether the vector of `text` is cached (encode would not call model-serving)."""
        return text in self._cache

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
        with timing.stage("embed"):
            query_vector = await self.encoder.encode(text, tenant)
        with timing.stage("vectors"):
            vectors = await self.cache.vectors(db, tenant, query_vector.model)
        if not len(vectors):
            raise SemanticUnavailable("no document of this department has an embedding yet")
        if vectors.dim != len(query_vector.vector):
            raise SemanticUnavailable("the stored document embeddings do not match the query model")
        with timing.stage("nearest"):
            ids, sims = await asyncio.to_thread(top_similar, vectors, query_vector.vector, self.candidates)
        return Semantic(tuple(ids), tuple(sims), self.fusion)

    async def close(self) -> None:
        await self.encoder.close()
