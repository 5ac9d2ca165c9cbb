"""Search at scale, against the real PostgreSQL: impact-ordered postings (migration 0016), each query
term's best postings only with exact BM25F re-scoring, totals that are lower bounds beyond that, the
exhaustive re-run when the bounded candidates cannot fill a page, and cached document frequencies.

`query.PER_TERM` is lowered to a few postings here so a collection of tens of documents behaves as a
common term does in a collection of a million.
"""
from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from services.common.db import Database
from services.common.grpc_utils import bind, create_server
from services.common.migrate import upgrade
from services.common.pb import search_pb2, search_pb2_grpc
from services.common.settings import CommonSettings
from services.search import engine, query
from services.search.grpc_service import add_to_server
from services.search.termstats import TermFiguresCache, truncated
from tests.conftest import DB_ADMIN, DB_HOST, DB_PORT, TEST_DB_NAME, create_tenant
from tests.search_index import index_document
from tests.support import aio_channel, grpc_security

pytestmark = pytest.mark.integration

N_DOCS = 30


def _insert(conn: psycopg.Connection, tenant: str, title: str, text: str, tag: str | None = None) -> str:
    doc_id = str(uuid.uuid4())
    body = text.encode()
    conn.execute(
        "INSERT INTO documents.documents (id, tenant_id, title, filename, content_type, size_bytes, sha256, status,"
        " text_content) VALUES (%s, %s, %s, %s, 'text/plain', %s, %s, 'tagged', %s)",
        (doc_id, tenant, title, f"{title}.txt", len(body), hashlib.sha256(body).hexdigest(), text))
    index_document(conn, tenant, doc_id, title, text)
    if tag:
        conn.execute("INSERT INTO documents.document_tags (tenant_id, document_id, tag, score) "
                     "VALUES (%s, %s, %s, 0.9)", (tenant, doc_id, tag))
    return doc_id


@pytest.fixture(scope="module")
def corpus(admin_dsn: str) -> tuple[str, list[str]]:
    """N_DOCS documents that all contain 예산, with more mentions in shorter texts early on; the last one
    (the weakest match) alone carries the tag 감사."""
    tenant = create_tenant(admin_dsn, f"scale-{uuid.uuid4().hex[:8]}")
    ids = []
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for i in range(N_DOCS):
            mentions = "예산 " * max(1, 6 - i // 5)
            filler = " ".join(["주민 의견을 들었다."] * (1 + i))
            tag = "감사" if i == N_DOCS - 1 else None
            ids.append(_insert(conn, tenant, f"회의록 {i}", f"{mentions}{filler} 복지", tag))
    return tenant, ids



@pytest.fixture
def small_top_k(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(query, "PER_TERM", 5)
    monkeypatch.setattr(engine, "TERM_FIGURES", TermFiguresCache())
    yield


async def _search(db: Database, tenant: str, q: str, tags: list[str] | None = None, limit: int = 3,
                  cursor: str | None = None, sort: str | None = None) -> engine.SearchResult:
    return await engine.search(db, tenant, query.validate(q, tags or [], limit, cursor, sort=sort))


async def test_grpc_callers_are_told_when_the_total_is_a_lower_bound(db, corpus, small_top_k, key_dir,  # type: ignore[no-untyped-def]
                                                                     make_token) -> None:
    tenant, _ = corpus
    server = create_server("search-scale-test", grpc_security("search", jwt_public_key=key_dir / "jwt_public.pem"))
    add_to_server(server, db)
    port = bind(server, "127.0.0.1:0", grpc_security("search"))
    await server.start()
    user = (("authorization", f"Bearer {make_token(tenant)}"),)
    try:
        async with aio_channel(f"127.0.0.1:{port}", "gateway", "search") as channel:
            stub = search_pb2_grpc.SearchStub(channel)  # type: ignore[no-untyped-call]
            bounded = await stub.Search(search_pb2.SearchRequest(query="예산", limit=3), timeout=30, metadata=user)
            assert bounded.total_is_lower_bound and 3 <= bounded.total < N_DOCS
            query.PER_TERM = 10_000   # every posting read: an exact count, and the flag says so
            engine.TERM_FIGURES = TermFiguresCache()
            exact = await stub.Search(search_pb2.SearchRequest(query="예산", limit=3), timeout=30, metadata=user)
            assert not exact.total_is_lower_bound and exact.total == N_DOCS
    finally:
        await server.stop(0)


async def test_common_term_reads_its_best_postings_and_reports_a_lower_bound(db, corpus, small_top_k) -> None:  # type: ignore[no-untyped-def]
    tenant, ids = corpus
    bounded = await _search(db, tenant, "예산")
    assert bounded.total_is_lower_bound
    assert 3 <= bounded.total < N_DOCS
    assert bounded.next_cursor is not None
    # The page is the same as scoring every posting: the best postings by impact are the best documents.
    query.PER_TERM = 10_000
    engine.TERM_FIGURES = TermFiguresCache()
    exact = await _search(db, tenant, "예산")
    assert not exact.total_is_lower_bound
    assert exact.total == N_DOCS
    assert [h.id for h in bounded.hits] == [h.id for h in exact.hits]
    assert [h.score for h in bounded.hits] == [h.score for h in exact.hits]
    assert exact.hits[0].id in ids[:5]


async def test_narrow_filter_beyond_the_best_postings_is_still_found(db, corpus, small_top_k) -> None:  # type: ignore[no-untyped-def]
    tenant, ids = corpus
    result = await _search(db, tenant, "예산", tags=["감사"])
    assert [h.id for h in result.hits] == [ids[-1]]
    assert result.total == 1
    assert not result.total_is_lower_bound


async def test_paging_past_the_bounded_candidates_covers_every_match_once(db, corpus, small_top_k) -> None:  # type: ignore[no-untyped-def]
    tenant, ids = corpus
    seen: list[str] = []
    cursor = None
    while True:
        page = await _search(db, tenant, "예산", limit=4, cursor=cursor)
        seen += [h.id for h in page.hits]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)


async def test_sort_by_date_considers_every_match(db, corpus, small_top_k) -> None:  # type: ignore[no-untyped-def]
    tenant, _ = corpus
    result = await _search(db, tenant, "예산", limit=50, sort="date")
    assert result.total == N_DOCS
    assert not result.total_is_lower_bound


async def test_document_frequencies_are_reused_only_while_the_collection_stays_put(db, corpus) -> None:  # type: ignore[no-untyped-def]
    tenant, _ = corpus
    params = query.validate("예산", [], 3, None)

    async def figures(known: dict[str, query.TermFigures]) -> dict:  # type: ignore[type-arg]
        plan = query.build_plan(params, ["예산"], figures=known)
        values = {**plan.params, "text_chars": 100, "fetch": 4, "offset": 0, "facet_limit": 5,
                  "facet_candidates": 10}
        async with db.tenant_transaction(tenant) as conn:
            row = await (await conn.execute(plan.sql, values)).fetchone()
        return dict(row["term_figures"][0], n=row["n_documents"])

    counted = await figures({})
    assert counted["counted"] and counted["df"] == N_DOCS and counted["postings"] == N_DOCS
    n = counted["n"]
    reused = await figures({"예산": query.TermFigures(df=7, postings=7, n_at=n)})
    assert not reused["counted"] and reused["df"] == 7
    stale = await figures({"예산": query.TermFigures(df=7, postings=7, n_at=n * 2)})
    assert stale["counted"] and stale["df"] == N_DOCS


async def test_a_tag_from_the_model_and_from_a_person_counts_once(db, corpus, admin_dsn) -> None:  # type: ignore[no-untyped-def]
    """A document carrying a tag twice (the model's and a person's) is one hit under that tag filter, in the
    exhaustive plan (the tags' documents joined with the terms' postings) as in a tag-only search."""
    tenant, ids = corpus
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO documents.document_tags (tenant_id, document_id, tag, score, source) "
                     "VALUES (%s, %s, '감사', 0.7, 'user')", (tenant, ids[-1]))
    try:
        for q in ("예산", None):
            params = query.validate(q, ["감사"], 5, None)
            plan = query.build_plan(params, ["예산"] if q else [], per_term=None)
            async with db.tenant_transaction(tenant) as conn:
                rows = await (await conn.execute(plan.sql, engine.statement_values(plan, params))).fetchall()
            assert [r["id"] for r in rows] == [uuid.UUID(ids[-1])] and rows[0]["total"] == 1, q
            assert [f["count"] for f in rows[0]["facets"] if f["tag"] == "감사"] == [1], q
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM documents.document_tags WHERE document_id = %s AND source = 'user'", (ids[-1],))


def test_term_figures_cache_keeps_counted_figures_per_tenant() -> None:
    cache = TermFiguresCache(ttl_s=60)
    cache.remember("t1", [{"term": "예산", "df": 3, "postings": 4, "counted": True},
                          {"term": "복지", "df": 1, "postings": 1, "counted": False}], 10)
    assert cache.known("t1", ["예산", "복지"]) == {"예산": query.TermFigures(3, 4, 10)}
    assert cache.known("t2", ["예산"]) == {}
    expired = TermFiguresCache(ttl_s=0)
    expired.remember("t1", [{"term": "예산", "df": 3, "postings": 4, "counted": True}], 10)
    assert expired.known("t1", ["예산"]) in ({}, {"예산": query.TermFigures(3, 4, 10)})
    assert truncated([{"postings": 6}], 5) and not truncated([{"postings": 5}], 5)
    assert not truncated([{"postings": 6}], None)


def test_migration_backfills_impacts_of_existing_postings() -> None:
    """Postings written before 0016 get their impact when it runs; better postings order first."""
    name = f"{TEST_DB_NAME}_m16"
    settings = CommonSettings(db_host=DB_HOST, db_port=DB_PORT, db_name=name)
    server = f"host={DB_HOST} port={DB_PORT} user={DB_ADMIN}"
    try:
        upgrade(settings, user=DB_ADMIN, revision="0012_search_embeddings")
        dsn = f"{server} dbname={name}"
        tenant = create_tenant(dsn, "m16")
        with psycopg.connect(dsn, autocommit=True) as conn:
            strong = _insert(conn, tenant, "예산 예산", "예산 예산 예산")
            weak = _insert(conn, tenant, "회의", "예산 " + "주민 의견을 들었다. " * 40)
        upgrade(settings, user=DB_ADMIN)
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT document_id::text, field, impact FROM documents.document_terms "
                                "WHERE tenant_id = %s AND term = '예산' ORDER BY impact DESC", (tenant,)).fetchall()
            indexes = {r[0] for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'document_terms'").fetchall()}
        assert all(r[2] is not None and 0 < r[2] < 2 for r in rows)
        assert rows[0][0] == strong
        assert (rows[-1][0], rows[-1][1]) == (weak, "text")
        assert "document_terms_impact" in indexes and "document_terms_tenant_term" not in indexes
    finally:
        with psycopg.connect(f"{server} dbname=postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


async def test_facets_count_the_best_candidates_when_there_are_many(db, corpus, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    tenant, _ = corpus
    monkeypatch.setattr(engine, "TERM_FIGURES", TermFiguresCache())
    full = await _search(db, tenant, "예산", limit=3)
    assert full.total == N_DOCS and not full.facets_partial
    assert [(f.tag, f.count) for f in full.facets] == [("감사", 1)]
    # The one tagged document is the weakest match: not among the best five.
    monkeypatch.setattr(query, "FACET_CANDIDATES", 5)
    partial = await _search(db, tenant, "예산", limit=3)
    assert partial.total == N_DOCS and partial.facets_partial
    assert partial.facets == ()
