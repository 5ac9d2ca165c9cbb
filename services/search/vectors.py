"""Per tenant, the document vectors a replica searches: exact below a size, an ANN index above it.

PostgreSQL (`documents.document_embeddings`) is the source of truth; see semantic.py's docstring
for the design and the measurements behind the settings.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from prometheus_client import Counter, Gauge

from services.common.db import Database
from services.common.embeddings import DTYPE, unpack

from .ann import AnnIndex, AnnParams, BuildStopped
from .ann_store import IndexStore

log = logging.getLogger(__name__)

# Rows whose updated_at is this close to the last one seen are read again (a transaction that
# started earlier may commit later), so none is missed.
WATERMARK_MARGIN = timedelta(seconds=60)
# Rows read from PostgreSQL per fetch when a tenant's vectors are read whole.
READ_PAGE = 5_000

VECTORS_READ = Counter("doctag_search_vectors_read",
                       "Document vectors read from PostgreSQL (whole reads and refreshes)")
INDEX_WORK = Gauge("doctag_search_vector_index_building",
                   "Tenants whose vector index is being built or reloaded in the background now")


@dataclass
class ExactVectors:
    """Vectors scored exactly (one matrix-vector product): row i of `matrix` is document `ids[i]`."""

    dim: int
    ids: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    buffer: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))

    @property
    def matrix(self) -> np.ndarray:
        return self.buffer[: len(self.ids)]

    def put(self, doc_id: str, vector: np.ndarray) -> None:
        row = self.rows.get(doc_id)
        if row is None:
            row = len(self.ids)
            if row >= self.buffer.shape[0]:   # grow by doubling: appending stays cheap
                grown = np.zeros((max(64, 2 * self.buffer.shape[0]), self.dim), dtype=np.float32)
                if row:
                    grown[:row] = self.buffer[:row]
                self.buffer = grown
            self.ids.append(doc_id)
            self.rows[doc_id] = row
        self.buffer[row] = vector

    def search(self, query: np.ndarray, k: int, exclude: str | None = None) -> tuple[list[str], list[float]]:
        """The `k` documents most similar to `query` (cosine: the vectors are unit length), best first."""
        matrix = self.matrix
        if not len(matrix) or k <= 0:
            return [], []
        sims = matrix @ query.astype(np.float32)
        if exclude is not None and exclude in self.rows:
            sims[self.rows[exclude]] = -np.inf
        k = min(k, len(sims))
        best = np.argpartition(-sims, k - 1)[:k]
        best = best[np.argsort(-sims[best], kind="stable")]
        pairs = [(self.ids[i], float(sims[i])) for i in best if np.isfinite(sims[i])]
        return [p[0] for p in pairs], [p[1] for p in pairs]


@dataclass
class TenantVectors:
    """One tenant's live document vectors of one model, served by `exact` or, once built, by `ann`.

    While an index is being built from `exact`, vectors put meanwhile are kept in `pending` and
    added to the new index before it replaces `exact` (whose float32 matrix is then dropped)."""

    model: str
    dim: int = 0
    exact: ExactVectors | None = None
    ann: AnnIndex | None = None
    pending: list[tuple[list[str], np.ndarray]] | None = None
    watermark: datetime | None = None
    checked: float = 0.0
    built: float = 0.0

    def __len__(self) -> int:
        if self.ann is not None:
            return len(self.ann)
        return len(self.exact.ids) if self.exact is not None else 0

    def search(self, query: np.ndarray, k: int, exclude: str | None = None) -> tuple[list[str], list[float]]:
        if self.ann is not None:
            return self.ann.search(query, k, exclude)
        return self.exact.search(query, k, exclude) if self.exact is not None else ([], [])

    async def put(self, ids: list[str], matrix: np.ndarray) -> None:
        """New or changed vectors (a changed one replaces the document's old vector)."""
        if not ids:
            return
        if self.ann is not None:
            await asyncio.to_thread(self.ann.add, ids, matrix)
            return
        if self.exact is None:
            self.exact = ExactVectors(self.dim)
        for doc_id, vector in zip(ids, matrix, strict=True):
            self.exact.put(doc_id, vector)
        if self.pending is not None:
            self.pending.append((ids, matrix))


def top_similar(vectors: TenantVectors, query: np.ndarray, k: int,
                exclude: str | None = None) -> tuple[list[str], list[float]]:
    """The `k` documents most similar to `query`, best first (exact, or approximate above the threshold)."""
    return vectors.search(query, k, exclude)


@dataclass(frozen=True)
class IndexPolicy:
    """When and how a tenant's vectors get an ANN index."""

    threshold: int = 20_000        # tenants with fewer vectors are scored exactly
    # The periodic full reload prunes an index in place (reads ids only, needs no second index in memory)
    # until this share of its keys has been removed or replaced; then it reads and builds it anew.
    rebuild_share: float = 0.2
    params: AnnParams = field(default_factory=AnnParams)
    build_threads: int = 1         # usearch threads building an index (a background thread of its own)


class VectorCache:
    """Per tenant, the vectors of its live documents for one embedding model, read from PostgreSQL.

    Reads only what changed since its last look (`updated_at`), at most every `refresh_s`; the
    whole set is read again every `full_reload_s` (which drops purged documents) in the background,
    queries answered meanwhile by the set it replaces. Above `policy.threshold` vectors a tenant
    is served by an ANN index built in a worker thread; exact scoring answers until it is ready.
    With a `store`, built indexes are saved, and a replica starts from its saved index when that
    still agrees with PostgreSQL (brought up to date from its watermark, then counted)."""

    def __init__(self, *, refresh_s: float, full_reload_s: float, policy: IndexPolicy | None = None,
                 store: IndexStore | None = None, late_commit_margin: timedelta = WATERMARK_MARGIN) -> None:
        self.refresh_s = refresh_s
        self.late_commit_margin = late_commit_margin
        self.full_reload_s = full_reload_s
        self.policy = policy or IndexPolicy()
        self.store = store
        self._tenants: dict[str, TenantVectors] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}   # per tenant, its index build or full reload
        self._stop = threading.Event()                     # set on close: builds in worker threads stop

    async def vectors(self, db: Database, tenant: str, model: str) -> TenantVectors:
        current = self._tenants.get(tenant)
        now = time.monotonic()
        if current is not None and current.model == model and now - current.checked < self.refresh_s:
            return current
        async with self._locks.setdefault(tenant, asyncio.Lock()):
            current = self._tenants.get(tenant)
            now = time.monotonic()
            if current is not None and current.model == model and now - current.checked < self.refresh_s:
                return current
            if current is None or current.model != model:
                current = await self._restore(db, tenant, model) or await self._read_all(db, tenant, model,
                                                                                         staged=False)
                self._tenants[tenant] = current
            else:
                if now - current.built >= self.full_reload_s and tenant not in self._tasks:
                    self._start(tenant, self._reload(db, tenant, model))
                await self._read_changes(db, tenant, current)
            current.checked = now
            if current.ann is None and len(current) >= self.policy.threshold and tenant not in self._tasks:
                self._start(tenant, self.build_index(current, tenant))
            return current

    def serving(self, tenant: str) -> tuple[str, int] | None:
        """How the tenant's vectors are searched now ("ann" or "exact") and how many there are;
        None when they are not loaded."""
        vectors = self._tenants.get(tenant)
        if vectors is None:
            return None
        return ("ann" if vectors.ann is not None else "exact"), len(vectors)

    async def settle(self) -> None:
        """Waits for the index builds and full reloads in progress (tests; an orderly shutdown)."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def close(self) -> None:
        """Stops the builds in progress (a worker thread ends at its next chunk; see ann.BUILD_CHUNK)."""
        self._stop.set()
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def _start(self, tenant: str, work: object) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work)  # type: ignore[arg-type]
        self._tasks[tenant] = task
        INDEX_WORK.set(len(self._tasks))
        task.add_done_callback(lambda t: self._finished(tenant, t))

    def _finished(self, tenant: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(tenant) is task:
            del self._tasks[tenant]
        INDEX_WORK.set(len(self._tasks))
        error = None if task.cancelled() else task.exception()
        if error is not None and not isinstance(error, BuildStopped):
            log.error("building a tenant's vector index failed; it stays as it was",
                      exc_info=error, extra={"tenant_id": tenant})

    async def build_index(self, vectors: TenantVectors, tenant: str) -> None:
        """Builds the ANN index of `vectors` from its exact matrix, then serves with it (and saves it)."""
        assert vectors.exact is not None
        ids, matrix = list(vectors.exact.ids), vectors.exact.matrix
        vectors.pending = []
        try:
            started = time.monotonic()
            index = await asyncio.to_thread(AnnIndex.build, ids, matrix, self.policy.params,
                                            threads=self.policy.build_threads, stop=self._stop)
            while vectors.pending:   # what came while it was built (no put runs between these awaits' ends)
                batch, vectors.pending = vectors.pending, []
                for batch_ids, batch_matrix in batch:
                    await asyncio.to_thread(index.add, batch_ids, batch_matrix)
            vectors.ann, vectors.exact = index, None
            log.info("tenant vectors now served by an ANN index", extra={
                "tenant_id": tenant, "vectors": len(index), "build_s": round(time.monotonic() - started, 1)})
        finally:
            vectors.pending = None
        await self._save(tenant, vectors)

    async def _reload(self, db: Database, tenant: str, model: str) -> None:
        """Drops purged documents. An index with few removals is pruned in place (only the ids are read);
        otherwise the vectors are read whole and swapped in when ready (a new index, built in the background)."""
        current = self._tenants.get(tenant)
        if current is not None and current.ann is not None and current.ann.removed_share < self.policy.rebuild_share:
            await self._prune(db, tenant, current)
            return
        fresh = await self._read_all(db, tenant, model, staged=True)
        current = self._tenants.get(tenant)
        if current is None or current.model != model:
            return   # the tenant's model changed meanwhile: that read replaced it already
        fresh.checked = 0.0   # the next query brings it up to date from its watermark
        self._tenants[tenant] = fresh
        await self._save(tenant, fresh)

    async def _prune(self, db: Database, tenant: str, vectors: TenantVectors) -> None:
        """Brings the index's set of documents in line with PostgreSQL's: drops the ones gone (purged,
        deleted) and reads the ones it lacks (restored from the bin: their vectors did not change)."""
        assert vectors.ann is not None
        ann = vectors.ann
        held = await asyncio.to_thread(ann.live_ids)   # before the read: all it holds was committed before it
        live: set[str] = set()
        async with db.tenant_transaction(tenant) as conn:
            # Read in pages, so that searches are answered between them: the whole list at once kept the
            # event loop busy for about 2 s at 500,000 documents (every `full_reload_s`, on every replica).
            async with conn.cursor(name="tenant_vector_ids") as cursor:
                await cursor.execute("SELECT document_id::text AS id FROM documents.document_embeddings "
                                     "WHERE model = %(model)s", {"model": vectors.model})
                while rows := await cursor.fetchmany(READ_PAGE):
                    live.update(row["id"] for row in rows)
            # Python loops in worker threads, not one C call over 500,000 ids: the GIL is handed back every
            # few milliseconds, so searches go on meanwhile.
            lacking = await asyncio.to_thread(lambda: sorted(doc_id for doc_id in live if doc_id not in ann))
            back = await (await conn.execute(
                "SELECT document_id, dim, vector FROM documents.document_embeddings "
                "WHERE model = %(model)s AND document_id = ANY(%(ids)s::uuid[])",
                {"model": vectors.model, "ids": lacking})).fetchall() if lacking else []
        gone = await asyncio.to_thread(lambda: sorted(doc_id for doc_id in held if doc_id not in live))
        await asyncio.to_thread(vectors.ann.remove, gone)
        await vectors.put(*_page(back, vectors))
        vectors.built = time.monotonic()
        if gone or back:
            log.info("vector index brought in line with the database",
                     extra={"tenant_id": tenant, "removed": len(gone), "restored": len(back)})
            await self._save(tenant, vectors)

    async def _save(self, tenant: str, vectors: TenantVectors) -> None:
        if self.store is None or vectors.ann is None:
            return
        try:
            await asyncio.to_thread(self.store.save, tenant, vectors.model, vectors.ann, vectors.watermark)
        except OSError as exc:   # a full or read-only disk costs the next restart a rebuild, nothing more
            log.warning("could not save the vector index", extra={"tenant_id": tenant, "error": str(exc)})

    async def _restore(self, db: Database, tenant: str, model: str) -> TenantVectors | None:
        """The saved index, brought up to date, when its size agrees with PostgreSQL's count (within 1%:
        documents deleted since it was saved stay in it until the next full reload)."""
        if self.store is None:
            return None
        stored = await asyncio.to_thread(self.store.load, tenant, model, self.policy.params)
        if stored is None:
            return None
        target = TenantVectors(model=model, dim=stored.index.dim, ann=stored.index, watermark=stored.watermark,
                               built=time.monotonic() - stored.age_s)
        await self._read_changes(db, tenant, target)
        async with db.tenant_transaction(tenant) as conn:
            row = await (await conn.execute("SELECT count(*) AS n FROM documents.document_embeddings "
                                            "WHERE model = %(model)s", {"model": model})).fetchone()
        live = int(row["n"]) if row is not None else 0
        if abs(len(target) - live) > max(10, live // 100):
            log.warning("saved vector index disagrees with the database; reading the vectors again",
                        extra={"tenant_id": tenant, "saved": len(target), "database": live})
            await asyncio.to_thread(self.store.remove, tenant, model)
            return None
        log.info("tenant vectors served by the saved ANN index", extra={"tenant_id": tenant, "vectors": live})
        return target

    async def _read_all(self, db: Database, tenant: str, model: str, *, staged: bool) -> TenantVectors:
        """All the tenant's vectors of `model`. `staged` (a background reload): a tenant above the
        threshold gets its index built here, from float16 pages, without a float32 matrix (exact
        scoring keeps float32)."""
        target = TenantVectors(model=model, built=time.monotonic())
        ids: list[str] = []
        pages: list[np.ndarray] = []
        async with db.tenant_transaction(tenant) as conn:
            began = await (await conn.execute("SELECT now() AS now")).fetchone()
            async with conn.cursor(name="tenant_vectors") as cursor:
                await cursor.execute("SELECT document_id, dim, vector FROM documents.document_embeddings "
                                     "WHERE model = %(model)s", {"model": model})
                while rows := await cursor.fetchmany(READ_PAGE):
                    VECTORS_READ.inc(len(rows))
                    page_ids, page = _page(rows, target)
                    ids.extend(page_ids)
                    pages.append(page)
                    if staged and len(ids) >= self.policy.threshold:   # an index will be built: float16 is enough
                        pages = [p.astype(np.float16, copy=False) for p in pages]
        # Everything updated since the read began is read again by the next refresh.
        target.watermark = began["now"] if began is not None else None
        matrix = np.concatenate(pages) if pages else np.zeros((0, target.dim), dtype=DTYPE)
        del pages
        if staged and len(ids) >= self.policy.threshold:
            target.ann = await asyncio.to_thread(AnnIndex.build, ids, matrix, self.policy.params,
                                                 threads=self.policy.build_threads, stop=self._stop)
        else:
            # document_id is the table's key: each id once
            target.exact = ExactVectors(target.dim, ids, {doc_id: i for i, doc_id in enumerate(ids)},
                                        matrix.astype(np.float32))
        return target

    async def _read_changes(self, db: Database, tenant: str, target: TenantVectors) -> None:
        """Reads the vectors written since the last read. The watermark is the time that read began
        (PostgreSQL's clock), not the newest row's `updated_at`: after a bulk write the newest rows
        would otherwise stay within the margin and be read again on every refresh until the next write."""
        since = target.watermark - self.late_commit_margin if target.watermark else None
        newer = "" if since is None else " AND updated_at > %(since)s"
        async with db.tenant_transaction(tenant) as conn:
            began = await (await conn.execute("SELECT now() AS now")).fetchone()
            rows = await (await conn.execute(
                "SELECT document_id, dim, vector, updated_at FROM documents.document_embeddings "
                f"WHERE model = %(model)s{newer}", {"model": target.model, "since": since})).fetchall()
        VECTORS_READ.inc(len(rows))
        ids, matrix = _page(rows, target)
        await target.put(ids, matrix)
        if began is not None:
            target.watermark = began["now"]


def _page(rows: list[dict[str, object]], target: TenantVectors) -> tuple[list[str], np.ndarray]:
    """Ids and float32 matrix of the rows whose dimension is the tenant's (the first row sets it)."""
    if target.dim == 0 and rows:
        target.dim = int(rows[0]["dim"])  # type: ignore[call-overload]
    kept = [r for r in rows if int(r["dim"]) == target.dim]  # type: ignore[call-overload]
    # another shape under the same model name is not comparable: skipped
    matrix = np.zeros((len(kept), target.dim), dtype=DTYPE)
    for i, row in enumerate(kept):
        matrix[i] = unpack(row["vector"])  # type: ignore[arg-type]
    return [str(r["document_id"]) for r in kept], matrix
