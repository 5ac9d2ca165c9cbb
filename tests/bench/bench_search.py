"""Search at scale: 1,000,000 documents over three tenants, p50/p95 through the search service.

`make bench-search` (`BENCH_ARGS=--quick` for 100,000 documents); never part of `make test`.

1. Corpus (built once, then reused): the real Korean text in ../shared/data, namely 693,644 movie
   reviews, 36,527 news headlines and 2,751 petitions, and, to reach the requested size,
   documents made of two reviews joined. Tenants hold 50% / 30% / 20% of it. Every document
   is analysed by the platform's analyser (`services.common.korean.analyze`, in one process
   per CPU) and loaded with COPY into the platform's own tables (documents, document_terms,
   document_tags) in a database of its own (`doctag_bench_search`, kept for the next run; a
   different size or data rebuilds it). Tags are the source's labels (a headline's topic, a
   petition's category, `영화리뷰` for reviews): the model is not run on a million documents here.
   Indexing throughput is reported for this bulk path and, on a sample, for the path upload
   and tagging take (one transaction per document).
2. Queries: a fixed mix drawn from the corpus's own vocabulary with a fixed seed: one, two and
   three terms of mixed document frequency and question-style sentences, each with and
   without a tag filter; through a search replica's HTTP API (a real `python -m services.search`
   process on a free port), at concurrency 1 and 8. Next to it the naive query a user of plain
   PostgreSQL would write (`ILIKE '%term%'`, every term required) on the same data, concurrency 1.
3. Document vectors for the semantic half (built once, then reused): the e5 passage vectors of a
   random sample of the corpus (`--real-vectors`, default 10,000), computed in this process by the
   platform's embedder exactly as model-serving computes them for the tagging worker (title, then
   text); e5 on two cores embeds about 80 short documents/s, so a million real vectors would take
   hours: every other document gets a vector made from two sampled real ones plus noise (the same
   dimension and spread, so what is measured is the index's cost at a million documents; ANN recall
   is measured on real vectors by `python -m tests.search_ann_tune`). The embedding throughput is
   reported as the indexing path's bottleneck.
4. The mix is run twice: hybrid (a real model-serving process embeds each query; the search replica
   fuses BM25 with its per-tenant vector index) and by words alone (semantic search off).
5. Index size on disk and the query plans relied on (EXPLAIN ANALYZE) go to the JSON.

Before the replicas are measured, what a search reads (`SEARCH_RELATIONS`, 4.3 GiB at a million
documents) is loaded into PostgreSQL's shared buffers (`pg_prewarm`), as far as `shared_buffers`
holds it: what is measured is a database server whose memory holds its working set, as
`doctag dbhost setup` sizes it, not whatever the build or an earlier run left cached. The report
names the server's `shared_buffers`; with the default 128 MB the tails are reads from disk.

Target on a 2-core machine: p95 <= 50 ms for the mix at concurrency 1 (hybrid, as users search).
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import io
import json
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
from psycopg import sql

from tests.bench.stats import Check, fmt, format_checks, format_table, percentile

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
DB_HOST = os.environ.get("DOCTAG_DB_HOST", "127.0.0.1")
DB_PORT = int(os.environ.get("DOCTAG_DB_PORT", "5432"))
DB_NAME = "doctag_bench_search"
# The hybrid replica's state dir: its saved vector index is reused by the next run (checked against
# PostgreSQL when read, rebuilt when it no longer agrees).
INDEX_STATE = REPO / "var" / "bench" / "search-state"
TENANT_SHARES = (0.5, 0.3, 0.2)
CORPUS_VERSION = "1"  # bump when the corpus recipe changes: the stored corpus is then rebuilt
REVIEW_TAG = "영화리뷰"
QUESTION_TEMPLATES = ("{a}은 무엇인가요", "{a} {b}에 대해 알려주세요", "{a}의 {b} 기준은 어디에 있나요")
# Per query class (1, 2, 3 terms, question) this many queries; each runs with and without a tag.
QUERIES_PER_CLASS = 25


# The replicas measured, in order: hybrid with its ANN index, hybrid with exact vectors, words alone.
MODES = ("hybrid", "hybrid_exact", "lexical")


def log(message: str) -> None:
    print(f"[bench-search] {message}", file=sys.stderr, flush=True)


def admin_dsn(dbname: str = DB_NAME) -> str:
    return f"host={DB_HOST} port={DB_PORT} user=postgres dbname={dbname}"


# -- corpus ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Doc:
    title: str
    text: str
    tag: str


def real_documents(data_dir: Path) -> list[Doc]:
    docs: list[Doc] = []
    for line in (data_dir / "headlines_train.jsonl").open(encoding="utf-8"):
        row = json.loads(line)
        docs.append(Doc(row["text"], row["text"], row["label"]))
    for line in (data_dir / "petitions_train.jsonl").open(encoding="utf-8"):
        row = json.loads(line)
        docs.append(Doc(row["title"], row["text"], row.get("label") or row.get("category") or "청원"))
    with gzip.open(data_dir / "nsmc_reviews_unlabeled.txt.gz", "rt", encoding="utf-8") as reviews:
        for line in reviews:
            review = line.strip()
            if review:
                docs.append(Doc(review[:40], review, REVIEW_TAG))
    return docs


def corpus(data_dir: Path, size: int, seed: int) -> list[Doc]:
    """`size` documents: the real ones (shuffled), then two reviews joined until the size is reached."""
    docs = real_documents(data_dir)
    rng = random.Random(seed)
    rng.shuffle(docs)
    if size <= len(docs):
        return docs[:size]
    reviews = [d for d in docs if d.tag == REVIEW_TAG]
    out = list(docs)
    while len(out) < size:
        a, b = rng.sample(reviews, 2)
        out.append(Doc(a.title, f"{a.text} {b.text}", REVIEW_TAG))
    return out


def corpus_spec(data_dir: Path, size: int, seed: int) -> str:
    files = sorted(p for p in data_dir.iterdir() if p.suffix in (".jsonl", ".gz"))
    sizes = ",".join(f"{p.name}:{p.stat().st_size}" for p in files)
    return f"v{CORPUS_VERSION};size={size};seed={seed};shares={TENANT_SHARES};{sizes}"


def _analyse(batch: list[tuple[str, str]]) -> list[tuple[list[str], list[str]]]:
    from services.common.korean import analyze

    return [(analyze(title), analyze(text)) for title, text in batch]


def analysed(docs: Sequence[Doc], processes: int, chunk: int = 2000) -> Iterator[tuple[list[str], list[str]]]:
    """(title terms, text terms) per document, in order, analysed in `processes` processes."""
    batches = [[(d.title, d.text) for d in docs[i:i + chunk]] for i in range(0, len(docs), chunk)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        for result in pool.imap(_analyse, batches):
            yield from result


# -- building the database -------------------------------------------------------------------------
def stored_spec() -> str | None:
    try:
        with psycopg.connect(admin_dsn()) as conn:
            row = conn.execute("SELECT spec FROM public.bench_corpus").fetchone()
            return str(row[0]) if row else None
    except psycopg.Error:
        return None


def recreate_database() -> None:
    from services.common.migrate import upgrade
    from services.common.settings import CommonSettings

    with psycopg.connect(admin_dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB_NAME)))
    upgrade(CommonSettings(db_host=DB_HOST, db_port=DB_PORT, db_name=DB_NAME), user="postgres")


def migrate_stored() -> None:
    """Brings a reused corpus's database to the current schema (a migration such as 0016 backfills in place)."""
    from services.common.migrate import upgrade
    from services.common.settings import CommonSettings

    upgrade(CommonSettings(db_host=DB_HOST, db_port=DB_PORT, db_name=DB_NAME), user="postgres")


def tenant_ids() -> list[str]:
    with psycopg.connect(admin_dsn()) as conn:
        rows = conn.execute("SELECT id FROM identity.tenants WHERE slug LIKE 'bench-search-%%' "
                            "ORDER BY slug").fetchall()
    return [str(r[0]) for r in rows]


def build(docs: list[Doc], spec: str, processes: int) -> dict[str, Any]:
    """Loads the corpus; returns throughput figures."""
    from services.cli import admin

    recreate_database()
    for i in range(len(TENANT_SHARES)):
        admin.create_tenant(admin_dsn(), f"bench-search-{'abc'[i]}", f"검색벤치 {i + 1}과", None)
    tenants = tenant_ids()
    bounds, start = [], 0
    for share in TENANT_SHARES:
        end = start + round(share * len(docs))
        bounds.append((start, min(end, len(docs))))
        start = end
    now = datetime.now(UTC)
    rng = random.Random(11)
    started = time.perf_counter()
    with psycopg.connect(admin_dsn()) as conn:
        deferred = drop_secondary_indexes(conn)
        # The per-row statistics trigger upserts one row per tenant: in a transaction of 500,000 inserts
        # each upsert walks the row's ever longer chain of versions. The statistics are computed once below.
        conn.execute("ALTER TABLE documents.documents DISABLE TRIGGER documents_search_stats")
        for tenant, (lo, hi) in zip(tenants, bounds, strict=True):
            log(f"tenant {tenant}: documents {lo}..{hi}")
            part = docs[lo:hi]
            documents, terms, tags = io.StringIO(), io.StringIO(), io.StringIO()
            with conn.cursor() as cur:
                for n, (doc, (title_terms, text_terms)) in enumerate(zip(part, analysed(part, processes),
                                                                         strict=True)):
                    doc_id = str(uuid.uuid4())
                    created = now - timedelta(seconds=rng.randrange(2 * 365 * 86400))
                    body = doc.text.encode("utf-8")
                    documents.write("\t".join((
                        doc_id, tenant, _copy_text(doc.title), f"{n}.txt", "text/plain", str(len(body)),
                        hashlib.sha256(body).hexdigest(), "tagged", _copy_text(doc.text),
                        str(len(title_terms)), str(len(text_terms)), created.isoformat(), created.isoformat(),
                        created.isoformat())) + "\n")
                    for field, field_terms in (("title", title_terms), ("text", text_terms)):
                        for term, tf in Counter(field_terms).items():
                            terms.write(f"{tenant}\t{doc_id}\t{field}\t{_copy_text(term)}\t{tf}\t"
                                        f"{len(field_terms)}\n")
                    tags.write(f"{tenant}\t{doc_id}\t{doc.tag}\t{round(rng.uniform(0.5, 1.0), 3)}\tmodel\n")
                    if (n + 1) % 50_000 == 0 or n + 1 == len(part):
                        _copy(cur, documents, terms, tags)
                        documents, terms, tags = io.StringIO(), io.StringIO(), io.StringIO()
                        log(f"  {n + 1} / {len(part)} loaded")
            conn.commit()
        conn.execute("ALTER TABLE documents.documents ENABLE TRIGGER documents_search_stats")
        conn.execute("INSERT INTO documents.search_stats (tenant_id, documents, title_terms, text_terms) "
                     "SELECT tenant_id, count(*), sum(title_length), sum(text_length) FROM documents.documents "
                     "GROUP BY tenant_id ON CONFLICT (tenant_id) DO UPDATE SET documents = EXCLUDED.documents, "
                     "title_terms = EXCLUDED.title_terms, text_terms = EXCLUDED.text_terms")
        conn.commit()
        loaded = time.perf_counter()
        log(f"loaded in {loaded - started:.0f} s; building {len(deferred)} indexes ...")
        conn.execute("SET maintenance_work_mem = '1GB'")
        for statement in deferred:
            conn.execute(statement)   # a definition read from pg_indexes above
            conn.commit()
        log(f"indexes built in {time.perf_counter() - loaded:.0f} s")
        conn.execute("CREATE TABLE public.bench_corpus (spec text NOT NULL)")
        conn.execute("INSERT INTO public.bench_corpus (spec) VALUES (%s)", (spec,))
        conn.commit()
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) documents.documents")
        conn.execute("VACUUM (ANALYZE) documents.document_terms")
        conn.execute("VACUUM (ANALYZE) documents.document_tags")
    seconds = time.perf_counter() - started
    return {"documents": len(docs), "seconds": seconds, "docs_per_s": len(docs) / seconds,
            "processes": processes}


def drop_secondary_indexes(conn: psycopg.Connection[Any]) -> list[str]:
    """Drops the indexes of the three loaded tables that back no constraint and returns their
    definitions (from pg_indexes, so exactly the migrations' indexes) to be built after the load:
    maintaining the trigram and postings indexes row by row made COPY the bottleneck (a third of
    the corpus loaded in 30 minutes), building them once at the end is the usual bulk-load path."""
    rows = conn.execute(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = 'documents' "
        "AND i.tablename IN ('documents', 'document_terms', 'document_tags') "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)").fetchall()
    for name, _ in rows:
        conn.execute(sql.SQL("DROP INDEX documents.{}").format(sql.Identifier(name)))
    conn.commit()
    return [str(definition) for _, definition in rows]


def _copy_text(value: str) -> str:
    """A value for COPY's text format (backslash, tab, newline and carriage return escaped)."""
    return (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
            .replace("\x00", ""))


def _copy(cur: psycopg.Cursor[Any], documents: io.StringIO, terms: io.StringIO, tags: io.StringIO) -> None:
    for statement, buffer in (
        ("COPY documents.documents (id, tenant_id, title, filename, content_type, size_bytes, sha256, status, "
         "text_content, title_length, text_length, created_at, processed_at, indexed_at) FROM STDIN", documents),
        ("COPY documents.document_terms (tenant_id, document_id, field, term, tf, field_length) FROM STDIN", terms),
        ("COPY documents.document_tags (tenant_id, document_id, tag, score, source) FROM STDIN", tags),
    ):
        with cur.copy(statement) as copy:
            copy.write(buffer.getvalue())


async def upload_path_throughput(docs: Sequence[Doc], tenant: str) -> dict[str, Any]:
    """Documents/s through what upload and tagging run per document (analysis, one transaction
    for the upload, one for the tagging result), into `tenant`; the sample is removed afterwards."""
    from services.common.db import Database
    from services.common.korean import analyze
    from services.upload import repository as repo

    db = Database(admin_dsn(), max_size=1)
    await db.open()
    ids = []
    started = time.perf_counter()
    try:
        for n, doc in enumerate(docs):
            doc_id = str(uuid.uuid4())
            body = doc.text.encode("utf-8")
            title_terms = await asyncio.to_thread(analyze, doc.title)
            async with db.tenant_transaction(tenant) as conn:
                await repo.insert_document(conn, {
                    "id": doc_id, "title": doc.title, "filename": f"sample-{n}.txt", "content_type": "text/plain",
                    "size_bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                    "title_terms": title_terms, "created_by": None})
            text_terms = await asyncio.to_thread(analyze, doc.text)
            async with db.tenant_transaction(tenant) as conn:
                await repo.store_tagging_result(conn, doc_id, doc.text, [], text_terms=text_terms)
            ids.append(doc_id)
        seconds = time.perf_counter() - started
    finally:
        await db.close()
        with psycopg.connect(admin_dsn(), autocommit=True) as conn:
            conn.execute("DELETE FROM documents.documents WHERE id = ANY(%s::uuid[])", (ids,))
    return {"documents": len(docs), "seconds": seconds, "docs_per_s": len(docs) / seconds}


# -- document vectors ------------------------------------------------------------------------------
VECTORS_VERSION = "1"   # bump when the recipe below changes: the stored vectors are then rebuilt
PROXY_SECOND_WEIGHT = 0.5
PROXY_NOISE = 0.25
EMBED_BATCH_WINDOWS = 64


def stored_vectors_spec() -> str | None:
    try:
        with psycopg.connect(admin_dsn()) as conn:
            row = conn.execute("SELECT spec FROM public.bench_vectors").fetchone()
            return str(row[0]) if row else None
    except psycopg.Error:
        return None


def vectors_spec(corpus: str, real: int, seed: int) -> str:
    """What the stored vectors were made from, the embedding model (name and version) included."""
    from services.model_serving.models.e5_base import BASE_SHA256
    from services.model_serving.models.embedder import MODEL_NAME, EmbedConfig

    return (f"v{VECTORS_VERSION};real={real};seed={seed};second={PROXY_SECOND_WEIGHT};noise={PROXY_NOISE};"
            f"model={MODEL_NAME}@{BASE_SHA256[:12]};version={EmbedConfig().version('passage')};corpus={corpus}")


def embed_real(texts: list[str], threads: int) -> tuple[np.ndarray, float, str, str]:
    """e5 passage vectors of `texts` through the platform's embedder (model-serving's code, in this
    process): (vectors, documents/s, model name, version)."""
    import torch

    from services.model_serving.models.base import InferenceOptions
    from services.model_serving.models.embedder import E5Embedder

    torch.set_num_threads(threads)
    embedder = E5Embedder.load(InferenceOptions(threads=threads))
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))   # similar lengths batch well
    out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    started = time.perf_counter()
    pending: list[tuple[int, Any]] = []
    windows: list[Any] = []

    def flush() -> None:
        if not windows:
            return
        outputs = embedder.forward(windows)
        row = 0
        for i, prepared in pending:
            n = len(prepared.windows)
            out[i] = embedder.finish(prepared, outputs[row:row + n])
            row += n
        pending.clear()
        windows.clear()

    for start in range(0, len(order), 256):
        chunk = order[start:start + 256]
        for i, prepared in zip(chunk, embedder.prepare_mode([texts[i] for i in chunk], "passage"), strict=True):
            pending.append((i, prepared))
            windows.extend(prepared.windows)
            if len(windows) >= EMBED_BATCH_WINDOWS:
                flush()
        if start and start % 2560 == 0:
            log(f"  {start} / {len(texts)} embedded")
    flush()
    seconds = time.perf_counter() - started
    return out, len(texts) / seconds, embedder.name, embedder.version


def build_vectors(real: int, seed: int, spec: str, threads: int) -> dict[str, Any]:
    """Fills documents.document_embeddings for every document (see the module docstring, step 3)."""
    from services.common.embeddings import pack
    from services.tagging_worker.worker import passage_text

    with psycopg.connect(admin_dsn()) as conn:
        sample = conn.execute(
            "SELECT id::text, tenant_id::text, title, left(text_content, 8000) FROM documents.documents "
            "ORDER BY md5(id::text || %s) LIMIT %s", (str(seed), real)).fetchall()
    log(f"embedding {len(sample)} sampled documents with e5 ({threads} threads) ...")
    pool, docs_per_s, model, version = embed_real([passage_text(r[2], r[3]) for r in sample], threads)
    if f"model={model};version={version};" not in spec:
        raise RuntimeError(f"the embedder loaded is {model} {version}, not the one the spec names: {spec}")
    real_ids = {r[0]: i for i, r in enumerate(sample)}
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    written = 0
    with psycopg.connect(admin_dsn()) as conn:
        conn.execute("DELETE FROM documents.document_embeddings")
        ids = conn.execute("SELECT id::text, tenant_id::text FROM documents.documents ORDER BY id").fetchall()
        with conn.cursor() as cur, cur.copy("COPY documents.document_embeddings (document_id, tenant_id, model, "
                                            "version, dim, vector) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["uuid", "uuid", "text", "text", "int4", "bytea"])
            for lo in range(0, len(ids), 50_000):
                part = ids[lo:lo + 50_000]
                first = pool[rng.integers(len(pool), size=len(part))]
                second = pool[rng.integers(len(pool), size=len(part))]
                noise = rng.standard_normal(first.shape).astype(np.float32) / np.sqrt(first.shape[1])
                made = first + PROXY_SECOND_WEIGHT * second + PROXY_NOISE * noise
                made /= np.linalg.norm(made, axis=1, keepdims=True)
                for (doc_id, tenant), vector in zip(part, made, strict=True):
                    own = real_ids.get(doc_id)
                    chosen = pool[own] if own is not None else vector
                    copy.write_row((uuid.UUID(doc_id), uuid.UUID(tenant), model, version, len(chosen), pack(chosen)))
                written += len(part)
                log(f"  {written} / {len(ids)} vectors written")
        conn.execute("DROP TABLE IF EXISTS public.bench_vectors")
        conn.execute("CREATE TABLE public.bench_vectors (spec text NOT NULL)")
        conn.execute("INSERT INTO public.bench_vectors (spec) VALUES (%s)", (spec,))
        conn.commit()
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) documents.document_embeddings")
    return {"real_vectors": len(sample), "embed_docs_per_s": docs_per_s, "embed_threads": threads,
            "vectors": written, "write_seconds": time.perf_counter() - started, "model": model, "version": version}


# -- queries ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchQuery:
    kind: str          # "1 term", "2 terms", "3 terms", "question"; or a kind of browse_mix
    text: str          # "" for a search by filters alone
    tag: str | None
    extra: tuple[tuple[str, str], ...] = ()   # more request parameters: a second tag, sort, from


def document_frequencies(tenant: str, sample: int = 20_000) -> list[tuple[str, int]]:
    """Hangul terms of the tenant with their document frequency, from a sample of its documents."""
    with psycopg.connect(admin_dsn()) as conn:
        rows = conn.execute(
            "SELECT term, count(*) FROM documents.document_terms WHERE tenant_id = %s AND field = 'text' "
            "AND document_id IN (SELECT id FROM documents.documents WHERE tenant_id = %s ORDER BY id LIMIT %s) "
            "AND term ~ '^[가-힣]{2,}$' GROUP BY term HAVING count(*) >= 3 ORDER BY count(*) DESC",
            (tenant, tenant, sample)).fetchall()
    return [(str(r[0]), int(r[1])) for r in rows]


def query_mix(frequencies: list[tuple[str, int]], tags: dict[str, int], seed: int) -> list[BenchQuery]:
    """Terms drawn from three frequency bands (the top 1% of terms, the next 9%, the rest), so the
    mix holds very common words as well as rare ones; each query with and without a tag filter
    (a tag drawn in proportion to how many documents carry it, as users filter by common tags)."""
    rng = random.Random(seed)
    terms = [t for t, _ in frequencies]
    top, mid = max(1, len(terms) // 100), max(2, len(terms) // 10)
    bands = (terms[:top], terms[top:mid], terms[mid:])

    def term() -> str:
        return rng.choice(rng.choice(bands))

    texts: list[tuple[str, str]] = []
    for _ in range(QUERIES_PER_CLASS):
        texts.append(("1 term", term()))
        texts.append(("2 terms", f"{term()} {term()}"))
        texts.append(("3 terms", f"{term()} {term()} {term()}"))
        texts.append(("question", rng.choice(QUESTION_TEMPLATES).format(a=term(), b=term())))
    names, weights = list(tags), list(tags.values())
    return [BenchQuery(kind, text, tag) for kind, text in texts
            for tag in (None, rng.choices(names, weights=weights)[0])]


def browse_mix(tags: dict[str, int], newest: datetime) -> list[BenchQuery]:
    """Searches without a text query, as a department sends them when it clicks a tag or a filter: the
    tag on most documents (reviews: 95% of the department), the others (from 4,200 documents down to
    16 in the largest department), each by confidence and newest first, with an upload-date range, two tags together (no
    document carries two here: the answer is empty, what is measured is finding that out), and a date
    range alone."""
    by_size = sorted(tags, key=lambda t: (-tags[t], t))
    common, others = by_size[0], by_size[1:]
    recent = (newest - timedelta(days=90)).date().isoformat()
    out = []
    for tag in [common] * 5 + others:
        out.append(BenchQuery("browse: tag" + (" (the common one)" if tag == common else ""), "", tag))
        out.append(BenchQuery("browse: tag, newest first", "", tag, (("sort", "date"),)))
        out.append(BenchQuery("browse: tag, last 90 days", "", tag, (("from", recent),)))
    for a, b in zip([common] * 3 + others[:3], others[:6], strict=False):
        out.append(BenchQuery("browse: two tags", "", a, (("tag", b),)))
    out += [BenchQuery("browse: last 90 days alone", "", None, (("from", recent),))] * 5
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SearchReplica:
    """A real search replica (`python -m services.search`) on free ports against the bench database."""

    def __init__(self, state: Path, model_target: str | None, extra_env: dict[str, str] | None = None) -> None:
        """`model_target`: a model-serving's gRPC address for hybrid search; None: words only."""
        from services.common.auth import ensure_keypair

        self.private_key, self.public_key = ensure_keypair(state / "keys")
        self.port = free_port()
        semantic = {"DOCTAG_SEMANTIC_SEARCH": "true", "DOCTAG_MODEL_GRPC_TARGET": model_target} if model_target \
            else {"DOCTAG_SEMANTIC_SEARCH": "false"}
        semantic.update(extra_env or {})
        env = {**os.environ, "DOCTAG_DB_HOST": DB_HOST, "DOCTAG_DB_PORT": str(DB_PORT), "DOCTAG_DB_NAME": DB_NAME,
               "DOCTAG_HTTP_HOST": "127.0.0.1", "DOCTAG_HTTP_PORT": str(self.port),
               "DOCTAG_GRPC_HOST": "127.0.0.1", "DOCTAG_GRPC_PORT": str(free_port()),
               "DOCTAG_JWT_PUBLIC_KEY_FILE": str(self.public_key), "DOCTAG_STATE_DIR": str(state),
               "DOCTAG_LOG_LEVEL": "WARNING",
               # Only its HTTP API is measured and model-serving is reached in plain gRPC on loopback,
               # so no platform CA is needed.
               "DOCTAG_GRPC_TLS": "false", **semantic}
        self.log = (state / f"search-{self.port}.log").open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "services.search"], env=env, cwd=REPO,
                                        stdout=self.log, stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 120) -> None:
        _wait_ready(self.process, f"{self.url}/readyz", "the search replica", timeout)

    def token(self, tenant: str) -> str:
        from services.common.auth import sign_token
        from services.common.settings import CommonSettings

        settings = CommonSettings()
        return sign_token(private_key_file=self.private_key, user_id=str(uuid.uuid4()), tenant_id=tenant,
                          tenant_slug="bench", username="bench", roles=["user"], issuer=settings.jwt_issuer,
                          audience=settings.jwt_audience, ttl_seconds=3600)

    def stop(self) -> None:
        _stop(self.process)
        self.log.close()


class ModelServingProcess:
    """A real model-serving (`python -m services.model_serving`) that embeds the queries: the committed
    model, no registry, plain gRPC on loopback (as the search replica above)."""

    def __init__(self, state: Path, public_key: Path) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        env = {**os.environ, "DOCTAG_HTTP_HOST": "127.0.0.1", "DOCTAG_HTTP_PORT": str(self.http_port),
               "DOCTAG_GRPC_HOST": "127.0.0.1", "DOCTAG_GRPC_PORT": str(self.grpc_port),
               "DOCTAG_JWT_PUBLIC_KEY_FILE": str(public_key), "DOCTAG_STATE_DIR": str(state / "model-serving"),
               "DOCTAG_LOG_LEVEL": "WARNING", "DOCTAG_GRPC_TLS": "false", "DOCTAG_MODEL_REGISTRY": "false",
               "DOCTAG_EMBEDDINGS": "true", "DOCTAG_EMBED_PRELOAD": "true"}
        self.log = (state / "model-serving.log").open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "services.model_serving"], env=env, cwd=REPO,
                                        stdout=self.log, stderr=subprocess.STDOUT)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def wait_ready(self, timeout: float = 300) -> None:
        _wait_ready(self.process, f"http://127.0.0.1:{self.http_port}/readyz", "model-serving", timeout)

    def stop(self) -> None:
        _stop(self.process)
        self.log.close()


def _wait_ready(process: subprocess.Popen[bytes], url: str, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{name} did not become ready")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


async def run_queries(url: str, token: str, queries: list[BenchQuery], concurrency: int) -> dict[str, Any]:
    latencies: dict[str, list[float]] = {}
    hits: dict[str, list[int]] = {}
    bounded: dict[str, list[bool]] = {}
    slowest: dict[str, tuple[float, str]] = {}   # per kind: the slowest query's time and parameters
    hybrid: list[bool] = []
    stages: list[tuple[float, dict[str, float]]] = []   # per request: its time and the replica's stage times
    pending = list(reversed(queries))
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=headers,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker() -> None:
            while pending:
                q = pending.pop()
                params: list[tuple[str, Any]] = [("limit", 20)]
                if q.text:
                    params.append(("q", q.text))
                if q.tag:
                    params.append(("tag", q.tag))
                params += q.extra
                t0 = time.perf_counter()
                resp = await client.get("/api/v1/search", params=params)
                elapsed = (time.perf_counter() - t0) * 1000
                resp.raise_for_status()
                key = q.kind + (" + tag" if q.tag and q.text else "")
                body = resp.json()
                hits.setdefault(key, []).append(int(body["total"]))
                hybrid.append(body.get("retrieval") == "hybrid")
                bounded.setdefault(key, []).append(bool(body.get("total_is_lower_bound")))
                latencies.setdefault(key, []).append(elapsed)
                stages.append((elapsed, server_timing(resp.headers.get("server-timing", ""))))
                if elapsed > slowest.get(key, (0.0, ""))[0]:
                    slowest[key] = (elapsed, " ".join(f"{k}={v}" for k, v in params))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    every = [ms for values in latencies.values() for ms in values]
    totals = [t for values in hits.values() for t in values]
    return {"concurrency": concurrency, "queries": len(every), "qps": len(every) / seconds,
            "p50_ms": percentile(every, 50), "p95_ms": percentile(every, 95),
            "zero_hit_share": sum(1 for t in totals if t == 0) / len(totals),
            "hybrid_share": sum(hybrid) / len(hybrid),
            "by_kind": {k: {"p50_ms": percentile(v, 50), "p95_ms": percentile(v, 95),
                            "median_total": percentile(hits[k], 50),
                            "lower_bound_share": sum(bounded[k]) / len(bounded[k]),
                            "zero_hit_share": sum(1 for t in hits[k] if t == 0) / len(hits[k]),
                            "slowest": {"ms": slowest[k][0], "params": slowest[k][1]}}
                        for k, v in sorted(latencies.items())},
            "stages": stage_summary(stages)}


def server_timing(header: str) -> dict[str, float]:
    """`name;dur=ms, ...` (the search service's Server-Timing header) as {name: ms}."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, _, params = part.partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur":
                out[name.strip()] = float(value)
    return out


def stage_summary(requests: list[tuple[float, dict[str, float]]]) -> dict[str, Any]:
    """Per stage: p50/p95 over the requests that ran it, and its mean share of the slowest 5% requests
    (what makes the tail)."""
    if not requests:
        return {}
    cut = percentile([ms for ms, _ in requests], 95)
    tail = [times for ms, times in requests if ms >= cut]
    names = sorted({name for _, times in requests for name in times})
    summary: dict[str, Any] = {}
    for name in names:
        values = [times[name] for _, times in requests if name in times]
        summary[name] = {"requests": len(values), "p50_ms": percentile(values, 50), "p95_ms": percentile(values, 95),
                         "tail_mean_ms": sum(t.get(name, 0.0) for t in tail) / len(tail)}
    summary["_tail"] = {"requests": len(tail), "from_ms": cut}
    return summary


def warm_up(replica: SearchReplica, token: str, queries: list[BenchQuery], *, hybrid: bool,
            timeout_s: float = 1800) -> dict[str, Any]:
    """Brings the replica to its steady state before measuring: the largest tenant's vectors read
    from PostgreSQL and its vector index built (`index_ready`), then a round of queries."""
    started = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    if hybrid:   # model-serving's first Embed may miss its deadline (then words only, for a few seconds)
        while not asyncio.run(run_queries(replica.url, token, queries[:1], 1))["hybrid_share"]:
            if time.monotonic() > deadline:
                raise TimeoutError("the replica never answered a query by meaning")
            time.sleep(1)
    else:
        asyncio.run(run_queries(replica.url, token, queries[:1], 1))
    while not index_ready(replica) and time.monotonic() < deadline:
        time.sleep(2)
    asyncio.run(run_queries(replica.url, token, queries[:20], 1))
    return {"seconds": time.perf_counter() - started, "index_ready": index_ready(replica)}


def rss_mib(pid: int) -> float:
    """Resident memory of a process (the replica holding the tenant's vectors and index)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def index_ready(replica: SearchReplica) -> bool:
    """No vector index still being built, as the replica's /metrics says."""
    response = httpx.get(f"{replica.url}/metrics", timeout=10)
    response.raise_for_status()
    values = [float(line.split()[-1]) for line in response.text.splitlines()
              if line.startswith("doctag_search_vector_index_building ")]
    if not values:
        raise RuntimeError("the replica's /metrics has no doctag_search_vector_index_building")
    return values[0] == 0


NAIVE_SQL = ("SELECT id, title FROM documents.documents WHERE tenant_id = %s AND deleted_at IS NULL AND {} "
             "ORDER BY created_at DESC LIMIT 20")


def naive_queries(tenant: str, queries: list[BenchQuery], limit: int) -> dict[str, Any]:
    """What a plain PostgreSQL user writes: every word required as a substring of title or text."""
    from services.common.korean import analyze

    latencies = []
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute("SET statement_timeout = '60s'")
        for q in [q for q in queries if q.tag is None][:limit]:
            words = [w for w in q.text.split() if analyze(w)] or q.text.split()
            condition = " AND ".join(["(title ILIKE %s OR text_content ILIKE %s)"] * len(words))
            values: list[Any] = [tenant]
            for word in words:
                values += [f"%{word}%", f"%{word}%"]
            t0 = time.perf_counter()
            conn.execute(NAIVE_SQL.format(condition), values).fetchall()
            latencies.append((time.perf_counter() - t0) * 1000)
    return {"queries": len(latencies), "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95)}


def query_plans(tenant: str, queries: list[BenchQuery]) -> dict[str, str]:
    """EXPLAIN ANALYZE of the search statement for one query of each kind, as the search role runs it."""
    from services.search import engine, morph, query
    from services.search.settings import SearchSettings

    plans = {}
    with psycopg.connect(SearchSettings(db_name=DB_NAME, db_host=DB_HOST, db_port=DB_PORT).dsn()) as conn:
        conn.execute("SELECT set_config('app.tenant_id', %s, false)", (tenant,))
        conn.execute("SET enable_bitmapscan = off")   # as services/search/engine.py runs the ranked statement
        seen = set()
        for q in queries:
            key = q.kind + (" + tag" if q.tag and q.text else "")
            if key in seen:
                continue
            seen.add(key)
            extra = dict(q.extra)
            tags = [t for t in (q.tag, extra.get("tag")) if t]
            if not q.text:   # as the engine runs a search without q: bitmap scans allowed
                params = query.validate(None, tags, 20, None, uploaded_from=extra.get("from"), sort=extra.get("sort"))
                plan = query.build_plan(params)
                conn.execute("SET enable_bitmapscan = on")
                rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + plan.sql,
                                    engine.statement_values(plan, params)).fetchall()
                conn.execute("SET enable_bitmapscan = off")
                plans[f"{key}: {tags} {extra}"] = "\n".join(str(r[0]) for r in rows)
                continue
            analyzed = morph.analyze_query(q.text)
            params = query.validate(q.text, tags, 20, None)
            plan = query.build_plan(params, analyzed.terms, analyzed.excluded, analyzed.phrases)
            values = engine.statement_values(plan, params)
            # As a warm replica runs it: the terms' document frequencies known from an earlier search.
            row = conn.execute(plan.sql, values).fetchone()
            figures = {f["term"]: query.TermFigures(f["df"], f["postings"], row[-1])
                       for f in (row[-2] or [])} if row else {}
            plan = query.build_plan(params, analyzed.terms, analyzed.excluded, analyzed.phrases, figures=figures)
            values = engine.statement_values(plan, params)
            rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + plan.sql, values).fetchall()
            plans[f"{key}: {q.text}"] = "\n".join(str(r[0]) for r in rows)
    return plans


def index_sizes() -> dict[str, int]:
    with psycopg.connect(admin_dsn()) as conn:
        out = {name: int(conn.execute("SELECT pg_total_relation_size(%s)", (name,)).fetchone()[0])  # type: ignore[index]
               for name in ("documents.documents", "documents.document_terms", "documents.document_tags")}
        out["database"] = int(conn.execute("SELECT pg_database_size(%s)", (DB_NAME,)).fetchone()[0])  # type: ignore[index]
    return out


async def count_term_stats() -> dict[str, Any]:
    """What upload's term statistics job does in the background (services/upload/term_stats.py):
    each large department's common terms counted for search, as the upload role."""
    from services.common.db import Database
    from services.upload.settings import UploadSettings
    from services.upload.term_stats import TermStatsJob

    settings = UploadSettings(db_host=DB_HOST, db_port=DB_PORT, db_name=DB_NAME)
    db = Database(settings.dsn(), max_size=1)
    await db.open()
    try:
        job = TermStatsJob(db, interval_seconds=3600, min_documents=settings.term_stats_min_documents,
                           min_postings=settings.term_stats_min_postings, slack=settings.term_stats_slack)
        started = time.perf_counter()
        tenants = await job.run_once()
        seconds = time.perf_counter() - started
    finally:
        await db.close()
    with psycopg.connect(admin_dsn()) as conn:
        terms = int(conn.execute("SELECT count(*) FROM documents.term_stats").fetchone()[0])  # type: ignore[index]
    return {"tenants": tenants, "seconds": round(seconds, 1), "terms": terms}


# What a search reads (EXPLAIN ANALYZE in the JSON): the impact-ordered postings, the rescoring's
# primary-key reads of postings, the documents with their text, and the tags; the trigram indexes for
# the partial-word fallback. Not the embeddings table: a replica reads it once, at warm-up.
SEARCH_RELATIONS = (
    "documents.document_terms_impact", "documents.document_terms_pkey", "documents.document_terms",
    "documents.documents_pkey", "documents.documents", "documents.document_tags_pkey",
    "documents.document_tags_tenant_tag", "documents.document_tags", "documents.search_stats",
    "documents.documents_text_trgm", "documents.documents_title_trgm",
)


def prewarm() -> dict[str, Any]:
    """Loads what a search reads into PostgreSQL's shared buffers (pg_prewarm), as far as they hold
    it, so that every replica is measured in the steady state of a database server whose memory
    holds its working set, not at whatever the build or an earlier run left cached. The operating
    system's page cache is not relied on: on these machines it is given back to the host within
    minutes (measured: 6.9 GB of cached files fell to 4.0 GB in five idle minutes)."""
    started = time.perf_counter()
    blocks = 0
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        shared_buffers = str(conn.execute("SHOW shared_buffers").fetchone()[0])  # type: ignore[index]
        working_set = int(conn.execute("SELECT sum(pg_relation_size(r::regclass)) FROM unnest(%s::text[]) r",
                                       (list(SEARCH_RELATIONS),)).fetchone()[0])  # type: ignore[index]
        for relation in SEARCH_RELATIONS:
            blocks += int(conn.execute("SELECT pg_prewarm(%s::regclass, 'buffer')",  # type: ignore[index]
                                       (relation,)).fetchone()[0])
    return {"relations": len(SEARCH_RELATIONS), "working_set_mib": round(working_set / 2**20),
            "mib": round(blocks * 8 / 1024), "shared_buffers": shared_buffers,
            "seconds": round(time.perf_counter() - started, 1)}


# -- the run ---------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="100,000 documents instead of 1,000,000")
    parser.add_argument("--documents", type=int, help="corpus size (default 1,000,000; --quick 100,000)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the corpus even when the stored one fits")
    parser.add_argument("--processes", type=int, default=len(os.sched_getaffinity(0)),
                        help="analyser processes while building")
    parser.add_argument("--real-vectors", type=int, default=10_000,
                        help="documents embedded with e5 for real (the others' vectors are made from them)")
    parser.add_argument("--sample", type=int, default=500, help="documents sent through the upload path")
    parser.add_argument("--naive-queries", type=int, default=20, help="naive ILIKE queries (each may take seconds)")
    parser.add_argument("--data-dir", type=Path, default=SHARED / "data")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, default=REPO / "var" / "bench" / "search.json")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"replica modes to measure, comma-separated (default every one: {','.join(MODES)}); "
                             "the checks cover the modes measured")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or set(args.modes) - set(MODES):
        parser.error(f"--modes takes some of {','.join(MODES)}")
    args.documents = args.documents or (100_000 if args.quick else 1_000_000)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    results: dict[str, Any] = {}
    spec = corpus_spec(args.data_dir, args.documents, args.seed)
    docs = corpus(args.data_dir, args.documents, args.seed)
    if args.rebuild or stored_spec() != spec:
        log(f"building the corpus: {len(docs)} documents in {args.processes} analyser processes ...")
        results["build"] = build(docs, spec, args.processes)
    else:
        log("reusing the stored corpus (migrated to the current schema)")
        migrate_stored()
        results["build"] = None
    wanted_vectors = vectors_spec(spec, args.real_vectors, args.seed)
    if results["build"] is not None or stored_vectors_spec() != wanted_vectors:
        results["vectors"] = build_vectors(args.real_vectors, args.seed, wanted_vectors, args.processes)
    else:
        log("reusing the stored document vectors")
        results["vectors"] = None
    log("term statistics: each large department's common terms ...")
    results["term_stats"] = asyncio.run(count_term_stats())
    tenants = tenant_ids()
    largest = tenants[0]
    log(f"upload path on {args.sample} documents ...")
    results["upload_path"] = asyncio.run(upload_path_throughput(docs[:args.sample], tenants[-1]))
    results["index_size_bytes"] = index_sizes()
    with psycopg.connect(admin_dsn()) as conn:
        counts: dict[str, int] = dict(conn.execute("SELECT tenant_id::text, count(*) FROM documents.documents "
                                   "GROUP BY tenant_id").fetchall())
        tag_counts = {str(r[0]): int(r[1]) for r in conn.execute(
            "SELECT tag, count(*) FROM documents.document_tags WHERE tenant_id = %s GROUP BY tag",
            (largest,)).fetchall()}
        newest = conn.execute("SELECT max(created_at) FROM documents.documents WHERE tenant_id = %s",
                              (largest,)).fetchone()[0]  # type: ignore[index]
    results["tenants"] = {t: int(counts.get(t, 0)) for t in tenants}
    queries = query_mix(document_frequencies(largest), tag_counts, args.seed)
    browse = browse_mix(tag_counts, newest)
    log("prewarm: the search tables and indexes into memory ...")
    results["prewarm"] = prewarm()
    state = Path(tempfile.mkdtemp(prefix="doctag-bench-search-", dir="/tmp"))
    serving: ModelServingProcess | None = None
    try:
        from services.common.auth import ensure_keypair

        serving = ModelServingProcess(state, ensure_keypair(state / "keys")[1])
        serving.wait_ready()
        for mode, model_target, env in (
            ("hybrid", serving.target, {"DOCTAG_ANN_PERSIST": "true", "DOCTAG_STATE_DIR": str(INDEX_STATE)}),
            ("hybrid_exact", serving.target, {"DOCTAG_ANN_THRESHOLD": str(10**9)}),
            ("lexical", None, {}),
        ):
            if mode not in args.modes:
                continue
            if mode == "lexical" and serving is not None:   # words alone: no model-serving running beside it
                serving.stop()
                serving = None
            replica = SearchReplica(state, model_target, env)
            try:
                replica.wait_ready()
                token = replica.token(largest)
                log(f"{mode}: warm-up (the tenant's vectors and index) ...")
                results[f"{mode}_warmup"] = warm_up(replica, token, queries, hybrid=model_target is not None)
                for concurrency in ((1, 8) if mode == "hybrid" else (1,)):
                    log(f"{mode}: {len(queries)} queries at concurrency {concurrency} ...")
                    results[f"{mode}_c{concurrency}"] = asyncio.run(
                        run_queries(replica.url, token, queries, concurrency))
                if mode == "lexical":   # no text query: no vectors involved
                    log(f"browsing without a text query: {len(browse)} searches at concurrency 1 ...")
                    asyncio.run(run_queries(replica.url, token, browse[:3], 1))
                    results["browse_c1"] = asyncio.run(run_queries(replica.url, token, browse, 1))
                results[f"{mode}_rss_mib"] = rss_mib(replica.process.pid)
            finally:
                replica.stop()
    finally:
        if serving is not None:
            serving.stop()
    log("naive ILIKE queries ...")
    results["naive"] = naive_queries(largest, queries, args.naive_queries)
    results["plans"] = query_plans(largest, queries + browse)
    table, checks = report(results)
    print(table)
    print()
    print(format_checks(checks))
    passed = all(c.passed for c in checks)
    print(f"\noverall: {'PASS' if passed else 'FAIL'}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = {"documents": args.documents, "cpu_count": os.cpu_count(), "started_at": started,
            "wall_seconds": time.time() - started, "queries": [q.__dict__ for q in queries]}
    args.json.write_text(json.dumps({"meta": meta, "results": results, "checks": [c.as_dict() for c in checks],
                                     "passed": passed}, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    print(f"results: {args.json}")
    return 0


def report(results: dict[str, Any]) -> tuple[str, list[Check]]:
    rows = []
    build = results["build"]
    if build:
        rows.append(["build (analyse + COPY)", f"{fmt(build['docs_per_s'])} documents/s",
                     f"{build['documents']} documents in {fmt(build['seconds'])} s, {build['processes']} processes"])
    else:
        rows.append(["build", "reused", f"the corpus stored in {DB_NAME} (--rebuild builds it again)"])
    path = results["upload_path"]
    rows.append(["upload + tagging path", f"{fmt(path['docs_per_s'])} documents/s",
                 f"{path['documents']} documents, one process, analysis and SQL only"])
    vectors = results["vectors"]
    if vectors:
        embed = vectors["embed_docs_per_s"]
        both = 1 / (1 / path["docs_per_s"] + 1 / embed)
        rows.append(["passage embeddings (e5-small)", f"{fmt(embed)} documents/s",
                     f"{vectors['real_vectors']} sampled documents, {vectors['embed_threads']} threads; with the "
                     f"path above: {fmt(both)} documents/s, embeddings included"])
        rows.append(["document vectors stored", f"{vectors['vectors']}",
                     f"{vectors['real_vectors']} real, the rest made from them; written in "
                     f"{fmt(vectors['write_seconds'])} s"])
    else:
        rows.append(["document vectors", "reused", "stored in the bench database (see the module docstring)"])
    sizes = results["index_size_bytes"]
    rows.append(["size on disk", f"{fmt(sizes['database'] / 2**30)} GiB",
                 ", ".join(f"{k} {fmt(v / 2**20)} MiB" for k, v in sizes.items() if k != "database")])
    if results.get("term_stats"):
        counted = results["term_stats"]
        rows.append(["term statistics (upload's job)", f"{counted['seconds']} s",
                     f"{counted['tenants']} departments counted now, {counted['terms']} common terms stored "
                     "(0: still fresh from an earlier run)"])
    if results.get("prewarm"):
        warm = results["prewarm"]
        rows.append(["search working set", f"{warm['working_set_mib']} MiB",
                     f"{warm['relations']} tables and indexes; server shared_buffers {warm['shared_buffers']}, "
                     f"{warm['mib']} MiB loaded into them in {warm['seconds']} s"])
    labels = {"hybrid": "hybrid (ANN index)", "hybrid_exact": "hybrid, exact vectors", "lexical": "words alone"}
    for mode, concurrency in (("hybrid", 1), ("hybrid", 8), ("hybrid_exact", 1), ("lexical", 1)):
        if f"{mode}_c{concurrency}" not in results:   # not measured this run (--modes)
            continue
        r = results[f"{mode}_c{concurrency}"]
        warm = results[f"{mode}_warmup"]
        rows.append([f"{labels[mode]}, concurrency {concurrency}",
                     f"p50 {fmt(r['p50_ms'])} ms, p95 {fmt(r['p95_ms'])} ms",
                     f"{r['queries']} queries, {fmt(r['qps'])} queries/s, zero hits "
                     f"{fmt(100 * r['zero_hit_share'])}%, hybrid answers {fmt(100 * r['hybrid_share'])}%"
                     + (f"; warm-up {fmt(warm['seconds'])} s, replica RSS {fmt(results[f'{mode}_rss_mib'])} MiB"
                        if concurrency == 1 else "")])
        if r.get("stages"):
            tail = r["stages"]["_tail"]
            rows.append(["  stages (replica's Server-Timing)", "p50 / p95 ms; mean in the slowest 5%",
                         "; ".join(f"{name} {fmt(v['p50_ms'])} / {fmt(v['p95_ms'])}; {fmt(v['tail_mean_ms'])}"
                                   for name, v in r["stages"].items() if name != "_tail")
                         + f" (slowest 5%: {tail['requests']} requests from {fmt(tail['from_ms'])} ms)"])
        if concurrency == 1:
            for kind, k in r["by_kind"].items():
                rows.append([f"  {kind}", f"p50 {fmt(k['p50_ms'])} ms, p95 {fmt(k['p95_ms'])} ms",
                             f"median hits {fmt(k['median_total'], 0)}, zero hits {fmt(100 * k['zero_hit_share'])}%, "
                             f"total a lower bound {fmt(100 * k.get('lower_bound_share', 0))}%"])
    if results.get("browse_c1"):
        r = results["browse_c1"]
        rows.append(["without a text query, concurrency 1", f"p50 {fmt(r['p50_ms'])} ms, p95 {fmt(r['p95_ms'])} ms",
                     f"{r['queries']} searches by tags and filters alone (browse_mix)"])
        for kind, k in r["by_kind"].items():
            rows.append([f"  {kind.removeprefix('browse: ')}", f"p50 {fmt(k['p50_ms'])} ms, p95 {fmt(k['p95_ms'])} ms",
                         f"median hits {fmt(k['median_total'], 0)}; slowest {fmt(k['slowest']['ms'])} ms: "
                         f"{k['slowest']['params']}"])
    naive = results["naive"]
    rows.append(["naive ILIKE, concurrency 1", f"p50 {fmt(naive['p50_ms'])} ms, p95 {fmt(naive['p95_ms'])} ms",
                 f"{naive['queries']} queries without tag"])
    checks = []
    if "hybrid_c1" in results:
        checks += [Check("hybrid search p95 at concurrency 1 (ms)", results["hybrid_c1"]["p95_ms"], "<=", 50),
                   Check("hybrid answers at concurrency 1 (share)", results["hybrid_c1"]["hybrid_share"], ">=", 0.99)]
    if "lexical_c1" in results:
        checks.append(Check("search by words alone p95 at concurrency 1 (ms)", results["lexical_c1"]["p95_ms"],
                            "<=", 50))
    if "hybrid_c1" in results and "hybrid_exact_c1" in results:
        checks.append(Check("hybrid p95, ANN index / exact vectors", results["hybrid_c1"]["p95_ms"]
                            / results["hybrid_exact_c1"]["p95_ms"], "<", 1.0))
    return format_table(["measure", "result", "detail"], rows), checks


if __name__ == "__main__":
    sys.exit(main())
