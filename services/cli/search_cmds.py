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
import uuid
from collections.abc import Sequence
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

async def _index(admin_dsn: str, tenant: str, corpus: list[CorpusDoc]) -> dict[str, str]:
    """Loads the corpus as upload + tagging would; returns platform id -> corpus id."""
    from services.common.db import Database
    from services.common.korean import analyze
    from services.upload import repository as repo

    ids: dict[str, str] = {}
    db = Database(admin_dsn, max_size=1)
    await db.open()
    try:
        for doc in corpus:
            doc_id = str(uuid.uuid4())
            body = doc.text.encode("utf-8")
            title_terms = await asyncio.to_thread(analyze, doc.title)
            text_terms = await asyncio.to_thread(analyze, doc.text)
            async with db.tenant_transaction(tenant) as conn:
                await repo.insert_document(conn, {
                    "id": doc_id, "title": doc.title, "filename": f"{doc.id}.txt", "content_type": "text/plain",
                    "size_bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                    "title_terms": title_terms, "created_by": None})
                await repo.store_tagging_result(conn, doc_id, doc.text, [], text_terms=text_terms)
            ids[doc_id] = doc.id
    finally:
        await db.close()
    return ids


async def _run_queries(tenant: str, queries: list[tuple[str, str]], ids: dict[str, str]) -> dict[str, list[str]]:
    from services.common.db import Database
    from services.search import engine, query
    from services.search.settings import SearchSettings

    runs: dict[str, list[str]] = {}
    db = Database(SearchSettings().dsn(), max_size=1)
    await db.open()
    try:
        for qid, text in queries:
            try:
                params = query.validate(text, [], K, None)
            except query.QueryError:
                runs[qid] = []
                continue
            result = await engine.search(db, tenant, params)
            runs[qid] = [ids.get(h.id, h.id) for h in result.hits]
    finally:
        await db.close()
    return runs


def _drop_tenant(admin_dsn: str, tenant: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM documents.documents WHERE tenant_id = %s", (tenant,))
        conn.execute("DELETE FROM documents.quotas WHERE tenant_id = %s", (tenant,))
        conn.execute("DELETE FROM documents.search_stats WHERE tenant_id = %s", (tenant,))
        conn.execute("DELETE FROM identity.tenants WHERE id = %s", (tenant,))


def evaluate(admin_dsn: str, corpus: list[CorpusDoc], queries: list[tuple[str, str]],
             qrels: dict[str, dict[str, int]], *, keep_tenant: bool = False) -> dict[str, Any]:
    from . import admin

    slug = f"search-eval-{uuid.uuid4().hex[:8]}"
    admin.create_tenant(admin_dsn, slug, "search evaluation", None)
    with admin._connect(admin_dsn) as conn:
        tenant = admin._tenant_id(conn, slug)
    try:
        ids = asyncio.run(_index(admin_dsn, tenant, corpus))
        runs = asyncio.run(_run_queries(tenant, queries, ids))
    finally:
        if not keep_tenant:
            _drop_tenant(admin_dsn, tenant)
    summary = summarise(runs, qrels)
    summary["documents"] = len(corpus)
    summary["tenant"] = slug if keep_tenant else None
    return summary


def cmd_eval(settings: Any, args: argparse.Namespace) -> None:
    corpus = read_corpus(Path(args.corpus))
    queries = read_queries(Path(args.queries))
    qrels = read_qrels(Path(args.qrels))
    result = evaluate(settings.admin_dsn(), corpus, queries, qrels, keep_tenant=args.keep_tenant)
    print(json.dumps(result, ensure_ascii=False))


# ------------------------------------------------------------------ reindex

REINDEX_BATCH = 100


async def reindex(admin_dsn: str, tenant_slug: str | None = None, *, only_missing: bool = False) -> dict[str, int]:
    """Re-analyses documents (title and extracted text) of one tenant or all tenants and rewrites
    their postings: after an analyser change, or with `only_missing` the documents never indexed
    (`indexed_at IS NULL`: stored before migration 0004; what `doctag stack up` runs).

    Two phases per document, as tagging does: the text is read and analysed outside any
    transaction, then written in a short one that locks the row and skips the document when its
    text changed meanwhile (a tagging result wrote fresher postings)."""
    from services.common.db import Database
    from services.common.korean import analyze
    from services.upload import repository as repo

    from . import admin

    missing = " AND indexed_at IS NULL" if only_missing else ""
    with admin._connect(admin_dsn) as conn:
        if tenant_slug:
            tenants = [admin._tenant_id(conn, tenant_slug)]
        else:  # with only_missing: a probe of the partial index documents_not_indexed
            rows = conn.execute("SELECT DISTINCT tenant_id FROM documents.documents "
                                f"WHERE true{missing} ORDER BY 1").fetchall()
            tenants = [str(r["tenant_id"]) for r in rows]
    done: dict[str, int] = {}
    db = Database(admin_dsn, max_size=1)
    await db.open()
    try:
        for tenant in tenants:
            after, count = "00000000-0000-0000-0000-000000000000", 0
            while True:
                async with db.tenant_transaction(tenant) as conn:
                    # The admin role is not subject to row-level security: filter the tenant explicitly.
                    batch = await (await conn.execute(
                        "SELECT id, title, text_content FROM documents.documents "
                        f"WHERE tenant_id = %s AND id > %s{missing} ORDER BY id LIMIT %s",
                        (tenant, after, REINDEX_BATCH))).fetchall()
                if not batch:
                    break
                for doc in batch:
                    title_terms = await asyncio.to_thread(analyze, doc["title"])
                    text_terms = await asyncio.to_thread(analyze, doc["text_content"] or "")
                    async with db.tenant_transaction(tenant) as conn:
                        current = await (await conn.execute(
                            "SELECT text_content FROM documents.documents WHERE id = %s AND tenant_id = %s "
                            "FOR NO KEY UPDATE", (doc["id"], tenant))).fetchone()
                        if current is None or current["text_content"] != doc["text_content"]:
                            continue   # purged, or tagged meanwhile: its postings are fresher
                        await repo.reindex_document(conn, str(doc["id"]), title_terms, text_terms)
                        count += 1
                after = str(batch[-1]["id"])
            done[tenant] = count
    finally:
        await db.close()
    return done


def cmd_reindex(settings: Any, args: argparse.Namespace) -> None:
    done = asyncio.run(reindex(settings.admin_dsn(), args.tenant, only_missing=args.missing_only))
    print(json.dumps({"tenants": len(done), "documents": sum(done.values())}))


def add_commands(search: Any) -> None:
    ev = search.add_parser("eval", help="nDCG@10, recall@10, MRR@10 and zero-hit share on a judged collection")
    ev.add_argument("--corpus", required=True, help='JSON lines {"id","title","text"}')
    ev.add_argument("--queries", required=True, help='JSON lines {"id","text"}')
    ev.add_argument("--qrels", required=True, help="query_id<TAB>doc_id<TAB>relevance")
    ev.add_argument("--keep-tenant", action="store_true", help="keep the evaluation tenant (for inspection)")
    ev.set_defaults(func=cmd_eval)
    ri = search.add_parser("reindex", help="re-analyse existing documents into the search index (after "
                                           "migration 0004 or an analyser change)")
    ri.add_argument("--tenant", metavar="SLUG", help="only this tenant (default: every tenant)")
    ri.add_argument("--missing-only", action="store_true", help="only documents that have no postings yet")
    ri.set_defaults(func=cmd_reindex)
