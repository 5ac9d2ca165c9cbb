"""`doctag search eval`: retrieval quality of the search service on a judged collection;
`doctag search reindex`: rebuild the search index (documents.document_terms) of existing documents.

The corpus goes into a fresh tenant through the same repository functions and analyser
the upload service uses (title at upload, text at tagging time); each query goes
through `services.search.engine.search`, as the search service's role, exactly as an
HTTP request would. The tenant and its documents are removed afterwards unless
`--keep-tenant` is given.

Metrics (the usual TREC definitions, cut at 10): nDCG@10 with graded gains
(2^rel - 1, log2 discount), recall@10 over the relevant (rel > 0) documents,
MRR@10, and the share of queries with no hit at all.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from .admin import AdminError

K = 10


@dataclass(frozen=True)
class CorpusDoc:
    id: str
    title: str
    text: str


def read_corpus(path: Path) -> list[CorpusDoc]:
    docs = []
    for n, line in enumerate(_lines(path), 1):
        row = json.loads(line)
        if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not isinstance(row.get("title"), str):
            raise AdminError(f"{path}:{n}: a corpus line needs string fields id, title (and text)")
        docs.append(CorpusDoc(row["id"], row["title"], str(row.get("text") or "")))
    return docs


def read_queries(path: Path) -> list[tuple[str, str]]:
    out = []
    for n, line in enumerate(_lines(path), 1):
        row = json.loads(line)
        if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not isinstance(row.get("text"), str):
            raise AdminError(f"{path}:{n}: a query line needs string fields id and text")
        out.append((row["id"], row["text"]))
    return out


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """query id -> {document id: relevance}; tab-separated `query_id doc_id relevance`."""
    out: dict[str, dict[str, int]] = {}
    for n, line in enumerate(_lines(path), 1):
        parts = line.split("\t")
        if len(parts) != 3:
            raise AdminError(f"{path}:{n}: expected query_id<TAB>doc_id<TAB>relevance")
        try:
            out.setdefault(parts[0], {})[parts[1]] = int(parts[2])
        except ValueError:
            raise AdminError(f"{path}:{n}: relevance must be an integer") from None
    return out


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise AdminError(f"{path}: no such file")
    return [line.rstrip("\r\n") for line in path.open(encoding="utf-8") if line.strip()]


# ------------------------------------------------------------------ metrics

def ndcg_at_k(ranked: Sequence[str], rels: dict[str, int], k: int = K) -> float:
    dcg = sum((2 ** rels.get(d, 0) - 1) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum((2 ** r - 1) / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at_k(ranked: Sequence[str], rels: dict[str, int], k: int = K) -> float:
    relevant = {d for d, r in rels.items() if r > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


def mrr_at_k(ranked: Sequence[str], rels: dict[str, int], k: int = K) -> float:
    for i, d in enumerate(ranked[:k]):
        if rels.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def summarise(runs: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Mean metrics over the queries that have judgements."""
    judged = [q for q in runs if any(r > 0 for r in qrels.get(q, {}).values())]
    n = len(judged)
    if not n:
        raise AdminError("no query has a relevant document in the qrels")

    def mean(values: list[float]) -> float:
        return round(sum(values) / n, 4)

    return {
        "queries": n,
        "ndcg@10": mean([ndcg_at_k(runs[q], qrels[q]) for q in judged]),
        "recall@10": mean([recall_at_k(runs[q], qrels[q]) for q in judged]),
        "mrr@10": mean([mrr_at_k(runs[q], qrels[q]) for q in judged]),
        "zero_hit_share": mean([0.0 if runs[q] else 1.0 for q in judged]),
    }


# ------------------------------------------------------------------ the run

# Deadline of an evaluation query's Embed call: generous, the measurement is of ranking, not speed.
EVAL_EMBED_TIMEOUT_S = 30.0
# Passage embeddings requested at once while loading the corpus (model-serving batches them).
EMBED_CONCURRENCY = 16


@asynccontextmanager
async def model_serving(target: str | None) -> AsyncIterator[str | None]:
    """The address of a model-serving to embed with: `target` itself, or with "local" one started
    in this process (the service's own gRPC servicer and runner, on a free loopback port);
    None for a lexical-only evaluation."""
    if target is None or target != "local":
        yield target
        return
    from services.common.grpc_utils import GrpcSecurity, bind, create_server
    from services.common.pb import model_serving_pb2_grpc
    from services.model_serving.grpc_api import ModelServingServicer
    from services.model_serving.runner import ModelRunner
    from services.model_serving.settings import ModelServingSettings

    settings = ModelServingSettings()
    runner = ModelRunner(settings)
    # As the service runs: mutual TLS with model-serving's certificate, callers authorised by role.
    security = GrpcSecurity.from_settings(settings)
    server = create_server("search-eval-model-serving", security)
    model_serving_pb2_grpc.add_ModelServingServicer_to_server(  # type: ignore[no-untyped-call]
        ModelServingServicer(runner, None), server)
    port = bind(server, "127.0.0.1:0", security)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)
        await runner.aclose()


async def _index(admin_dsn: str, tenant: str, corpus: list[CorpusDoc], model_target: str | None) -> dict[str, str]:
    """Loads the corpus as upload + tagging would (the title's postings at upload; the text's
    postings and, with a model-serving, the passage embedding the tagging worker asks for);
    returns platform id -> corpus id."""
    from services.common.db import Database
    from services.common.korean import analyze
    from services.upload import repository as repo

    ids: dict[str, str] = {}
    vectors = await _passage_embeddings(model_target, tenant, corpus) if model_target else [None] * len(corpus)
    db = Database(admin_dsn, max_size=1)
    await db.open()
    try:
        for doc, embedding in zip(corpus, vectors, strict=True):
            doc_id = str(uuid.uuid4())
            body = doc.text.encode("utf-8")
            title_terms = await asyncio.to_thread(analyze, doc.title)
            text_terms = await asyncio.to_thread(analyze, doc.text)
            async with db.tenant_transaction(tenant) as conn:
                await repo.insert_document(conn, {
                    "id": doc_id, "title": doc.title, "filename": f"{doc.id}.txt", "content_type": "text/plain",
                    "size_bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                    "title_terms": title_terms, "created_by": None})
                await repo.store_tagging_result(conn, doc_id, doc.text, [], text_terms=text_terms,
                                                embedding=embedding)
            ids[doc_id] = doc.id
    finally:
        await db.close()
    return ids


async def _passage_embeddings(target: str, tenant: str, corpus: list[CorpusDoc]) -> list[Any]:
    """Each document's embedding exactly as the tagging worker gets it (its client, its passage text)."""
    from services.common.grpc_utils import GrpcSecurity, client_channel
    from services.tagging_worker.clients import ModelClient, Retrier
    from services.tagging_worker.settings import WorkerSettings
    from services.tagging_worker.worker import passage_text

    settings = WorkerSettings(model_grpc_target=target)
    channel = client_channel(target, GrpcSecurity.from_settings(settings), "model-serving")
    client = ModelClient(channel, settings, Retrier(settings))
    try:
        out: list[Any] = []
        for start in range(0, len(corpus), EMBED_CONCURRENCY):
            chunk = corpus[start:start + EMBED_CONCURRENCY]
            out.extend(await asyncio.gather(*(client.embed_passage(passage_text(d.title, d.text))
                                              for d in chunk)))
        if any(e is None for e in out):
            raise AdminError(f"model-serving at {target} does not serve embeddings")
        return out
    finally:
        await channel.close()


async def _run_queries(tenant: str, queries: list[tuple[str, str]], ids: dict[str, str],
                       semantic: Any = None) -> tuple[dict[str, list[str]], int]:
    """Each query through the search service's own code, as its role; (runs, queries answered by words
    only although `semantic` was given)."""
    from services.common.db import Database
    from services.search import engine, query
    from services.search.settings import SearchSettings

    runs: dict[str, list[str]] = {}
    degraded = 0
    db = Database(SearchSettings().dsn(), max_size=1)
    await db.open()
    try:
        for qid, text in queries:
            try:
                params = query.validate(text, [], K, None)
            except query.QueryError:
                runs[qid] = []
                continue
            result = await engine.search(db, tenant, params, semantic)
            degraded += int(semantic is not None and result.retrieval != "hybrid")
            runs[qid] = [ids.get(h.id, h.id) for h in result.hits]
    finally:
        await db.close()
    return runs, degraded


def _drop_tenant(admin_dsn: str, tenant: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM documents.documents WHERE tenant_id = %s", (tenant,))
        conn.execute("DELETE FROM documents.quotas WHERE tenant_id = %s", (tenant,))
        conn.execute("DELETE FROM documents.search_stats WHERE tenant_id = %s", (tenant,))
        conn.execute("DELETE FROM identity.tenants WHERE id = %s", (tenant,))


def semantic_for(target: str, fusion: Any = None) -> Any:
    """A hybrid search's semantic side as the search service builds it, against `target`."""
    from services.search.api import make_cache
    from services.search.semantic import QueryEncoder, SemanticSearch
    from services.search.settings import SearchSettings

    # an evaluation's tenant is temporary: its vector index is not saved in the state dir
    settings = SearchSettings(ann_persist=False)
    from services.common.grpc_utils import GrpcSecurity

    encoder = QueryEncoder(target, GrpcSecurity.from_settings(settings), timeout_s=EVAL_EMBED_TIMEOUT_S,
                           retry_after_s=0.0)
    return SemanticSearch(encoder, make_cache(settings), settings.semantic_candidates, fusion or settings.fusion())


async def _evaluate(admin_dsn: str, tenant: str, corpus: list[CorpusDoc], queries: list[tuple[str, str]],
                    qrels: dict[str, dict[str, int]], model_target: str | None) -> dict[str, Any]:
    async with model_serving(model_target) as target:
        ids = await _index(admin_dsn, tenant, corpus, target)
        lexical, _ = await _run_queries(tenant, queries, ids)
        if target is None:
            return {**summarise(lexical, qrels), "retrieval": "lexical"}
        semantic = semantic_for(target)
        try:
            hybrid, degraded = await _run_queries(tenant, queries, ids, semantic)
        finally:
            await semantic.close()
    return {**summarise(hybrid, qrels), "retrieval": "hybrid", "degraded_queries": degraded,
            "lexical_only": summarise(lexical, qrels)}


def evaluate(admin_dsn: str, corpus: list[CorpusDoc], queries: list[tuple[str, str]],
             qrels: dict[str, dict[str, int]], *, keep_tenant: bool = False, model_target: str | None = "local",
             baselines: bool = False) -> dict[str, Any]:
    """Metrics of the platform's search on the collection: hybrid (and lexical-only beside it) when
    `model_target` names a model-serving ("local": one in this process), else lexical only;
    `baselines` adds plain BM25 over Kiwi terms and Tantivy over Hangul bigrams on the same data."""
    from . import admin

    slug = f"search-eval-{uuid.uuid4().hex[:8]}"
    admin.create_tenant(admin_dsn, slug, "search evaluation", None)
    with admin._connect(admin_dsn) as conn:
        tenant = admin._tenant_id(conn, slug)
    try:
        summary = asyncio.run(_evaluate(admin_dsn, tenant, corpus, queries, qrels, model_target))
    finally:
        if not keep_tenant:
            _drop_tenant(admin_dsn, tenant)
    summary["documents"] = len(corpus)
    summary["tenant"] = slug if keep_tenant else None
    if baselines:
        from .search_baselines import bm25_kiwi, tantivy_bigrams

        summary["baselines"] = {"bm25_kiwi": summarise(bm25_kiwi(corpus, queries, K), qrels),
                                "tantivy_hangul_bigrams": summarise(tantivy_bigrams(corpus, queries, K), qrels)}
    return summary


def cmd_eval(settings: Any, args: argparse.Namespace) -> None:
    corpus = read_corpus(Path(args.corpus))
    queries = read_queries(Path(args.queries))
    qrels = read_qrels(Path(args.qrels))
    target = None if args.lexical_only else args.model_serving
    result = evaluate(settings.admin_dsn(), corpus, queries, qrels, keep_tenant=args.keep_tenant,
                      model_target=target, baselines=args.baselines)
    print(json.dumps(result, ensure_ascii=False))


# ------------------------------------------------------------------ reindex

REINDEX_BATCH = 100


@dataclass(frozen=True)
class EmbeddingTarget:
    """The embedding model a reindex brings documents to, as model-serving reports it."""

    client: Any      # services.tagging_worker.clients.ModelClient
    model: str
    version: str


async def _embedding_target(target: str | None, channel_holder: list[Any]) -> tuple[EmbeddingTarget | None, str | None]:
    """(the current embedding model and version, None) from one probe Embed; (None, why) when
    model-serving cannot be asked (then only postings are brought up to date)."""
    if target is None:
        return None, "no model-serving given"
    import grpc

    from services.common.grpc_utils import GrpcSecurity, client_channel
    from services.tagging_worker.clients import ModelClient, ModelUnavailable, Retrier
    from services.tagging_worker.settings import WorkerSettings

    settings = WorkerSettings(model_grpc_target=target, retry_attempts=2, retry_initial_seconds=0.2)
    channel = client_channel(target, GrpcSecurity.from_settings(settings), "model-serving")
    channel_holder.append(channel)
    client = ModelClient(channel, settings, Retrier(settings))
    try:
        probe = await client.embed_passage("passage")
    except (ModelUnavailable, grpc.aio.AioRpcError) as exc:
        return None, f"model-serving at {target} is unavailable ({exc})"
    if probe is None:
        return None, f"model-serving at {target} does not serve embeddings"
    return EmbeddingTarget(client, probe.model, probe.version), None


async def reindex(admin_dsn: str, tenant_slug: str | None = None, *, only_missing: bool = False,
                  everything: bool = False, model_target: str | None = None) -> dict[str, Any]:
    """Brings the search index of one tenant or all tenants up to date, in the background of a
    running platform: postings re-analysed where the document was indexed by another analyser
    version (or never: `only_missing`, what `doctag stack up` runs), and, with a model-serving,
    passage embeddings recomputed where the document has none or one of another model or version.
    `everything` redoes every document.

    In batches of REINDEX_BATCH documents (keyset on id); each document is analysed and embedded
    outside any transaction, then written in a short one that locks only its row and skips it when
    its text changed meanwhile (a tagging result wrote fresher data). Search keeps answering
    throughout: no table lock, and a document is searchable with its old postings until its new
    ones commit."""
    from services.common.db import Database
    from services.common.korean import analyser_version, analyze
    from services.tagging_worker.worker import passage_text
    from services.upload import repository as repo

    from . import admin

    current = analyser_version()
    channels: list[Any] = []
    async with model_serving(None if only_missing else model_target) as target:
        embedding, embedding_note = await _embedding_target(target, channels) if target else (None, None)
        params: dict[str, Any] = {}
        if only_missing:
            stale = "d.indexed_at IS NULL"
        elif everything:
            stale = "true"
        else:
            stale = "d.analyser_version IS DISTINCT FROM %(analyser)s"
            params["analyser"] = current
            if embedding is not None:
                stale = (f"({stale} OR (d.status = 'tagged' AND (e.model IS DISTINCT FROM %(model)s "
                         "OR e.version IS DISTINCT FROM %(version)s)))")
                params.update(model=embedding.model, version=embedding.version)
        with admin._connect(admin_dsn) as conn:
            if tenant_slug:
                tenants = [admin._tenant_id(conn, tenant_slug)]
            else:
                rows = conn.execute("SELECT DISTINCT d.tenant_id FROM documents.documents d LEFT JOIN "
                                    "documents.document_embeddings e ON e.document_id = d.id "
                                    f"WHERE {stale} ORDER BY 1", params).fetchall()
                tenants = [str(r["tenant_id"]) for r in rows]
        postings = embedded = 0
        db = Database(admin_dsn, max_size=1)
        await db.open()
        try:
            for tenant in tenants:
                after = "00000000-0000-0000-0000-000000000000"
                while True:
                    async with db.tenant_transaction(tenant) as conn:
                        # The admin role is not subject to row-level security: filter the tenant explicitly.
                        batch = await (await conn.execute(
                            "SELECT d.id, d.title, d.text_content, d.status, d.analyser_version, e.model, e.version "
                            "FROM documents.documents d LEFT JOIN documents.document_embeddings e "
                            f"ON e.document_id = d.id WHERE d.tenant_id = %(tenant)s AND d.id > %(after)s "
                            f"AND {stale} ORDER BY d.id LIMIT %(limit)s",
                            {**params, "tenant": tenant, "after": after, "limit": REINDEX_BATCH})).fetchall()
                    if not batch:
                        break
                    vectors = await _batch_embeddings(embedding, tenant, batch, everything, passage_text)
                    for doc in batch:
                        redo_terms = only_missing or everything or doc["analyser_version"] != current
                        terms = None
                        if redo_terms:
                            terms = (await asyncio.to_thread(analyze, doc["title"]),
                                     await asyncio.to_thread(analyze, doc["text_content"] or ""))
                        vector = vectors.get(str(doc["id"]))
                        async with db.tenant_transaction(tenant) as conn:
                            row = await (await conn.execute(
                                "SELECT text_content FROM documents.documents WHERE id = %s AND tenant_id = %s "
                                "FOR NO KEY UPDATE", (doc["id"], tenant))).fetchone()
                            if row is None or row["text_content"] != doc["text_content"]:
                                continue   # purged, or tagged meanwhile: its index is fresher
                            if terms is not None:
                                await repo.reindex_document(conn, str(doc["id"]), *terms)
                                postings += 1
                            if vector is not None:
                                await repo.write_embedding(conn, str(doc["id"]), vector)
                                embedded += 1
                    after = str(batch[-1]["id"])
        finally:
            await db.close()
            for channel in channels:
                await channel.close()
    result: dict[str, Any] = {"tenants": len(tenants), "documents": postings, "embeddings": embedded,
                              "analyser_version": current}
    if embedding is not None:
        result["embedding_model"] = f"{embedding.model} {embedding.version}"
    elif not only_missing:
        result["embeddings_skipped"] = embedding_note
    return result


async def _batch_embeddings(target: EmbeddingTarget | None, tenant: str, batch: list[dict[str, Any]],
                            everything: bool, passage_text: Any) -> dict[str, Any]:
    """document id -> new passage embedding, for the tagged documents of the batch whose embedding is
    missing or stale (all tagged ones with `everything`), EMBED_CONCURRENCY requests at a time."""
    if target is None:
        return {}
    wanted = [d for d in batch if d["status"] == "tagged" and d["text_content"] is not None and (
        everything or d["model"] != target.model or d["version"] != target.version)]
    out: dict[str, Any] = {}
    for start in range(0, len(wanted), EMBED_CONCURRENCY):
        chunk = wanted[start:start + EMBED_CONCURRENCY]
        vectors = await asyncio.gather(*(target.client.embed_passage(passage_text(d["title"], d["text_content"]))
                                         for d in chunk))
        out.update({str(d["id"]): v for d, v in zip(chunk, vectors, strict=True) if v is not None})
    return out


def cmd_reindex(settings: Any, args: argparse.Namespace) -> None:
    target = args.model_serving or os.environ.get("DOCTAG_MODEL_GRPC_TARGET", DEFAULT_MODEL_SERVING)
    print(json.dumps(asyncio.run(reindex(settings.admin_dsn(), args.tenant, only_missing=args.missing_only,
                                         everything=args.all, model_target=target)), ensure_ascii=False))


DEFAULT_MODEL_SERVING = "127.0.0.1:9121"


def add_commands(search: Any) -> None:
    ev = search.add_parser("eval", help="nDCG@10, recall@10, MRR@10 and zero-hit share on a judged collection")
    ev.add_argument("--corpus", required=True, help='JSON lines {"id","title","text"}')
    ev.add_argument("--queries", required=True, help='JSON lines {"id","text"}')
    ev.add_argument("--qrels", required=True, help="query_id<TAB>doc_id<TAB>relevance")
    ev.add_argument("--keep-tenant", action="store_true", help="keep the evaluation tenant (for inspection)")
    ev.add_argument("--baselines", action="store_true",
                    help="also plain BM25 over Kiwi terms and Tantivy over Hangul bigrams, same data, same run")
    ev.add_argument("--model-serving", default="local", metavar="HOST:PORT",
                    help="model-serving for embeddings (default: one started in this process)")
    ev.add_argument("--lexical-only", action="store_true", help="no embeddings: rank by words only")
    ev.set_defaults(func=cmd_eval)
    ri = search.add_parser("reindex", help="bring the search index up to date: postings of another analyser "
                                           "version, embeddings missing or of another model/version")
    ri.add_argument("--tenant", metavar="SLUG", help="only this tenant (default: every tenant)")
    ri.add_argument("--missing-only", action="store_true",
                    help="only documents that have no postings yet (no embeddings)")
    ri.add_argument("--all", action="store_true", help="every document, stale or not")
    ri.add_argument("--model-serving", metavar="HOST:PORT",
                    help="model-serving for embeddings (default $DOCTAG_MODEL_GRPC_TARGET or 127.0.0.1:9121; "
                         "'local': one started in this process)")
    ri.set_defaults(func=cmd_reindex)
