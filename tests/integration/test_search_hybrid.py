"""Hybrid search, similar documents, filters and stale re-indexing against the real PostgreSQL and a
real model-serving gRPC server (the service's own servicer and runner, base e5 embeddings).

Documents are inserted as the admin (as upload leaves them), indexed with the same analyser and
repository SQL (tests/search_index.py) and given the passage embedding model-serving computes for
them, stored with the same SQL the upload service uses at tagging time.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import grpc
import httpx
import numpy as np
import psycopg
import pytest

from services.cli.main import main
from services.common.db import Database
from services.common.grpc_utils import bind, create_server
from services.common.korean import analyser_version
from services.common.pb import search_pb2, search_pb2_grpc
from services.search import engine, morph, query
from services.search.api import build_app, make_cache
from services.search.grpc_service import add_to_server
from services.search.semantic import QueryEncoder, SemanticUnavailable
from services.search.settings import SearchSettings
from services.search.termstats import TermFiguresCache
from services.search.vectors import VECTORS_READ
from services.tagging_worker.worker import passage_text
from services.upload import repository as repo
from tests.conftest import create_tenant
from tests.embedding_server import as_array, embed, embedding_server
from tests.search_index import index_document
from tests.support import aio_channel, grpc_security, sync_channel

pytestmark = pytest.mark.integration

DOCS = {
    "noise": ("아파트 층간소음 민원",
              "위층에서 밤마다 뛰는 소리 때문에 잠을 잘 수 없습니다. 이웃 간 소음 분쟁을 중재해 주세요.",
              "2026-03-02", "민원.hwp"),
    "noise2": ("윗집 발소리 문제", "밤늦게 윗집에서 쿵쿵거리는 발소리가 들려 가족이 고통받고 있습니다.",
               "2026-03-05", "발소리.pdf"),
    "phishing": ("전화금융사기 피해 구제",
                 "검찰을 사칭한 전화를 받고 모르는 계좌로 돈을 송금했습니다. 돌려받을 방법이 필요합니다.",
                 "2026-02-10", "사기.pdf"),
    "budget": ("2027년 예산안", "정부는 내년도 예산을 크게 늘렸다. 복지 분야 지출이 증가했다.",
               "2026-01-15", "예산.hwp"),
    "traffic": ("어린이 교통 안전 대책", "어린이 보호구역 교통사고를 줄이기 위해 단속 카메라를 늘린다.",
                "2026-01-20", "교통.txt"),
}


@dataclass
class World:
    model_serving: str
    tenant_a: str
    tenant_b: str
    slug_a: str
    docs: dict[str, str] = field(default_factory=dict)
    deleted_noise: str = ""
    b_noise: str = ""
    unembedded: str = ""


def _insert(conn: psycopg.Connection, tenant: str, title: str, text: str, created: str, filename: str,
            embedding=None, deleted: bool = False) -> str:  # type: ignore[no-untyped-def]
    doc_id = str(uuid.uuid4())
    body = text.encode()
    conn.execute(
        "INSERT INTO documents.documents (id, tenant_id, title, filename, content_type, size_bytes, sha256, status,"
        " text_content, created_at, deleted_at) VALUES (%s, %s, %s, %s, 'text/plain', %s, %s, 'tagged', %s, %s,"
        " CASE WHEN %s THEN now() END)",
        (doc_id, tenant, title, filename, len(body), hashlib.sha256(body + doc_id.encode()).hexdigest(), text,
         f"{created}T09:00:00+00:00", deleted))
    index_document(conn, tenant, doc_id, title, text)
    if embedding is not None:
        conn.execute(repo.UPSERT_EMBEDDING_SQL, (doc_id, embedding.model, embedding.version, embedding.dim,
                                                 embedding.vector))
    return doc_id


@pytest.fixture(scope="module")
def world(admin_dsn: str) -> Iterator[World]:
    with embedding_server() as target:
        slug_a = f"hyb-a-{uuid.uuid4().hex[:6]}"
        w = World(target, create_tenant(admin_dsn, slug_a), create_tenant(admin_dsn, f"hyb-b-{uuid.uuid4().hex[:6]}"),
                  slug_a)
        texts = [passage_text(t, x) for t, x, _, _ in DOCS.values()]
        vectors = dict(zip(DOCS, embed(target, texts), strict=True))
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            for key, (title, text, created, filename) in DOCS.items():
                w.docs[key] = _insert(conn, w.tenant_a, title, text, created, filename, vectors[key])
            w.deleted_noise = _insert(conn, w.tenant_a, *DOCS["noise"], vectors["noise"], deleted=True)
            w.b_noise = _insert(conn, w.tenant_b, *DOCS["noise"], vectors["noise"])
            w.unembedded = _insert(conn, w.tenant_a, "임시 메모", "내용 없음에 가까운 메모", "2026-04-01", "메모.txt")
        yield w


def _settings(test_db_name: str, key_dir: Path, **overrides: object) -> SearchSettings:
    return SearchSettings(db_name=test_db_name, jwt_public_key_file=key_dir / "jwt_public.pem",
                          vector_refresh_s=0, **overrides)


@pytest.fixture
async def client(world: World, test_db_name: str, key_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = _settings(test_db_name, key_dir, model_grpc_target=world.model_serving, embed_timeout_ms=60_000)
    app = build_app(settings, Database(settings.dsn(), max_size=4))
    async with app.router.lifespan_context(app):
        await app.state.analyser.wait()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://search") as c:
            yield c


def _auth(make_token, tenant: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"Authorization": f"Bearer {make_token(tenant)}"}


async def _search(client: httpx.AsyncClient, headers: dict[str, str], **params: object) -> dict:
    r = await client.get("/api/v1/search", params=params, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def test_embeddings_are_unit_vectors_and_a_paraphrase_is_closest(world: World) -> None:
    query = embed(world.model_serving, ["위층 소음 때문에 잠을 못 자요"], "query")[0]
    passages = embed(world.model_serving, [passage_text(t, x) for t, x, _, _ in DOCS.values()])
    assert query.dim == 384 and query.model.startswith("multilingual-e5-small@")
    assert query.version == "query/1x128/mean" and passages[0].version == "passage/2x256/mean"
    sims = {key: float(as_array(query) @ as_array(p)) for key, p in zip(DOCS, passages, strict=True)}
    assert all(abs(np.linalg.norm(as_array(p)) - 1) < 1e-5 for p in passages)
    assert max(sims, key=sims.__getitem__) in ("noise", "noise2")
    assert min(sims["noise"], sims["noise2"]) > max(sims["budget"], sims["traffic"])


async def test_hybrid_search_finds_a_document_by_meaning(client, world: World, make_token) -> None:  # type: ignore[no-untyped-def]
    headers = _auth(make_token, world.tenant_a)
    body = await _search(client, headers, q="보이스피싱 신고")
    assert body["retrieval"] == "hybrid" and body["degraded_reason"] is None
    ids = [h["id"] for h in body["hits"]]
    # No word of the query occurs in the phishing document (전화금융사기, 사칭, 송금): found by meaning.
    assert ids[0] == world.docs["phishing"]
    assert world.deleted_noise not in ids and world.b_noise not in ids
    # By meaning alone a document scores at most the semantic weight (query.Fusion: 0.25)...
    assert 0 < body["hits"][0]["score"] <= 0.25
    # ...so the best word match ranks first: BM25 over the best BM25 (0.75 at 1.0), plus its similarity.
    noise = await _search(client, headers, q="층간소음")
    noise_ids = [h["id"] for h in noise["hits"]]
    assert noise_ids[0] == world.docs["noise"]
    assert 0.75 <= noise["hits"][0]["score"] <= 1.0
    assert [h["score"] for h in noise["hits"]] == sorted((h["score"] for h in noise["hits"]), reverse=True)
    assert world.deleted_noise not in noise_ids and world.b_noise not in noise_ids
    # Operators still hold in hybrid mode: an excluded word removes the document, semantic or not.
    excluded = await _search(client, headers, q="층간소음 -소음")
    assert world.docs["noise"] not in [h["id"] for h in excluded["hits"]]


def _stages(response: httpx.Response) -> dict[str, float]:
    """The Server-Timing header as {stage: milliseconds}."""
    stages = {}
    for part in response.headers["server-timing"].split(", "):
        name, dur = part.split(";dur=")
        stages[name] = float(dur)
    return stages


async def test_a_search_says_where_its_time_went(client, world: World, make_token) -> None:  # type: ignore[no-untyped-def]
    headers = _auth(make_token, world.tenant_a)
    r = await client.get("/api/v1/search", params={"q": "층간소음 민원"}, headers=headers)
    assert r.status_code == 200 and r.json()["retrieval"] == "hybrid"
    stages = _stages(r)
    # The hybrid path, each stage once: the query vector and the lexical half run side by side.
    assert {"analyse", "lexical", "embed", "vectors", "nearest", "vector_wait", "page", "snippets"} <= set(stages)
    assert "exhaustive" not in stages and "fallback" not in stages
    assert all(ms >= 0 for ms in stages.values())
    # A query by words alone has no semantic stages; one that matches no word runs the partial-word fallback.
    r = await client.get("/api/v1/search", params={"q": "층간소"}, headers=headers)
    stages = _stages(r)
    assert "fallback" in stages, r.headers["server-timing"]
    browse = await client.get("/api/v1/search", params={"tag": "민원"}, headers=headers)
    assert set(_stages(browse)) == {"page", "snippets"}
    metrics = (await client.get("/metrics")).text
    assert 'doctag_search_stage_seconds_count{stage="nearest"}' in metrics
    assert 'doctag_search_stage_seconds_count{stage="fallback"}' in metrics


async def test_a_query_asked_again_is_answered_in_one_statement_with_the_same_hits(  # type: ignore[no-untyped-def]
        client, world: World, make_token) -> None:
    """The first time a text is asked, its lexical half runs while model-serving embeds it (two statements);
    asked again (its vector cached), one statement answers, and with the same page, scores and facets."""
    headers = _auth(make_token, world.tenant_a)
    params = {"q": "교통 예산 소음 이웃", "limit": 3}
    first = await client.get("/api/v1/search", params=params, headers=headers)
    again = await client.get("/api/v1/search", params=params, headers=headers)
    assert "lexical" in _stages(first) and "lexical" not in _stages(again)
    assert "page" in _stages(again) and "nearest" in _stages(again)
    a, b = first.json(), again.json()
    assert a["retrieval"] == b["retrieval"] == "hybrid"
    assert [(h["id"], round(h["score"], 9)) for h in a["hits"]] == [(h["id"], round(h["score"], 9)) for h in b["hits"]]
    assert (a["total"], a["facets"], a["next_cursor"] is None) == (b["total"], b["facets"], b["next_cursor"] is None)
    assert len(a["hits"]) == 3 and a["next_cursor"] is not None
    nxt = await client.get("/api/v1/search", params={**params, "cursor": a["next_cursor"]}, headers=headers)
    assert nxt.status_code == 200 and "lexical" not in _stages(nxt)   # a next page: the vector is at hand
    assert not {h["id"] for h in nxt.json()["hits"]} & {h["id"] for h in a["hits"]}


async def test_search_degrades_to_words_when_model_serving_is_down(world: World, test_db_name: str, key_dir: Path,
                                                                   make_token) -> None:  # type: ignore[no-untyped-def]
    settings = _settings(test_db_name, key_dir, model_grpc_target="127.0.0.1:1", embed_retry_s=60)
    app = build_app(settings, Database(settings.dsn(), max_size=2))
    async with app.router.lifespan_context(app):
        await app.state.analyser.wait()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s") as c:
            headers = _auth(make_token, world.tenant_a)
            for _ in range(2):   # the second query does not ask model-serving again (paused)
                body = await _search(c, headers, q="층간소음")
                assert body["retrieval"] == "lexical"
                assert body["degraded_reason"] == "model-serving is unavailable"
                assert [h["id"] for h in body["hits"]] == [world.docs["noise"]]


async def test_query_encoder_pauses_after_a_failure() -> None:
    encoder = QueryEncoder("127.0.0.1:1", grpc_security("search"), timeout_s=5, retry_after_s=60)
    try:
        with pytest.raises(SemanticUnavailable, match="unavailable"):
            await encoder.encode("예산", "t")
        paused_until = encoder._paused_until
        with pytest.raises(SemanticUnavailable):
            await encoder.encode("교통", "t")
        assert encoder._paused_until == paused_until, "no second call while paused"
    finally:
        await encoder.close()


async def test_similar_documents(client, world: World, make_token) -> None:  # type: ignore[no-untyped-def]
    headers = _auth(make_token, world.tenant_a)
    r = await client.get(f"/api/v1/documents/{world.docs['noise']}/similar", headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    ids = [h["id"] for h in body["hits"]]
    assert ids[0] == world.docs["noise2"], "the paraphrase is the closest"
    assert world.docs["noise"] not in ids, "the document itself is excluded"
    assert world.deleted_noise not in ids and world.b_noise not in ids
    assert set(ids) <= set(world.docs.values())
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True) and body["model"].startswith("multilingual-e5-small@")
    # The gateway reaches it under the search prefix: the same answer.
    again = await client.get(f"/api/v1/search/documents/{world.docs['noise']}/similar",
                             params={"limit": 2}, headers=headers)
    assert [h["id"] for h in again.json()["hits"]] == ids[:2]
    # Another tenant's, a deleted, an unknown and a malformed id: 404 problem+json.
    for doc, who in ((world.docs["noise"], world.tenant_b), (world.deleted_noise, world.tenant_a),
                     (str(uuid.uuid4()), world.tenant_a), ("not-an-id", world.tenant_a)):
        r = await client.get(f"/api/v1/documents/{doc}/similar", headers=_auth(make_token, who))
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    # A document without an embedding: no hits, and why.
    r = await client.get(f"/api/v1/documents/{world.unembedded}/similar", headers=headers)
    assert r.status_code == 200 and r.json()["hits"] == [] and "no embedding" in r.json()["reason"]
    r = await client.get(f"/api/v1/documents/{world.docs['noise']}/similar", params={"limit": 0}, headers=headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "limit"


async def test_filters_and_sort(client, world: World, make_token) -> None:  # type: ignore[no-untyped-def]
    headers = _auth(make_token, world.tenant_a)
    march = await _search(client, headers, q="소음", **{"from": "2026-03-01", "to": "2026-03-31"})
    assert {h["id"] for h in march["hits"]} <= {world.docs["noise"], world.docs["noise2"]}
    assert world.docs["noise"] in {h["id"] for h in march["hits"]}
    early = await _search(client, headers, q="소음", to="2026-03-02")
    assert world.docs["noise"] in {h["id"] for h in early["hits"]}, "a bare `to` date includes that day"
    assert world.docs["noise2"] not in {h["id"] for h in early["hits"]}
    pdfs = await _search(client, headers, q="소음 사기", type="pdf")
    assert {h["id"] for h in pdfs["hits"]} <= {world.docs["noise2"], world.docs["phishing"]}
    by_date = await _search(client, headers, type=["hwp", "pdf", "txt"], sort="date")
    dates = [h["created_at"] for h in by_date["hits"]]
    assert dates == sorted(dates, reverse=True) and len(dates) == 6
    by_date_q = await _search(client, headers, q="예산 교통 소음", sort="date")
    dates = [h["created_at"] for h in by_date_q["hits"]]
    assert dates == sorted(dates, reverse=True)
    for params, wrong in (({"q": "예산", "from": "어제"}, "from"), ({"q": "예산", "type": "exe"}, "type"),
                          ({"q": "예산", "sort": "views"}, "sort"),
                          ({"q": "예산", "from": "2026-02-01", "to": "2026-01-01"}, "to")):
        r = await client.get("/api/v1/search", params=params, headers=headers)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == wrong


async def test_a_page_the_best_postings_cannot_fill_is_answered_from_every_posting(  # type: ignore[no-untyped-def]
        client, world: World, make_token, monkeypatch) -> None:
    """With each term's best postings cut to one (`query.PER_TERM`), a narrow filter leaves too few candidates
    to fill the page: the fusing statement, which could not fill it either, is not run, and the answer is the
    one every posting gives, semantic candidates included."""
    headers = _auth(make_token, world.tenant_a)
    wanted = {"q": "소음 사기 교통", "type": "pdf", "limit": 20}
    monkeypatch.setattr(engine, "TERM_FIGURES", TermFiguresCache())
    monkeypatch.setattr(query, "PER_TERM", 10_000)
    exact = await _search(client, headers, **wanted)
    assert not exact["total_is_lower_bound"] and exact["retrieval"] == "hybrid" and exact["hits"]
    given: list[bool] = []
    build_plan = query.build_plan

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        given.append(kwargs.get("lexical") is not None)
        return build_plan(*args, **kwargs)

    monkeypatch.setattr(query, "PER_TERM", 1)
    monkeypatch.setattr(query, "build_plan", spy)
    bounded = await _search(client, headers, **wanted)
    assert given and not any(given), "no fusing statement was given the lexical candidates"
    for key in ("hits", "total", "facets", "total_is_lower_bound", "retrieval"):
        assert bounded[key] == exact[key], key
    monkeypatch.setattr(query, "build_plan", build_plan)
    full_page = await _search(client, headers, q="소음 사기 교통", limit=1)   # the best postings fill one hit
    assert full_page["total_is_lower_bound"] and len(full_page["hits"]) == 1


async def test_grpc_search_with_filters_and_retrieval_mode(world: World, test_db_name: str, key_dir: Path,
                                                           make_token) -> None:  # type: ignore[no-untyped-def]
    settings = _settings(test_db_name, key_dir)
    db = Database(settings.dsn(), max_size=2)
    await db.open()
    server = create_server("search-hybrid-test", grpc_security("search", jwt_public_key=key_dir / "jwt_public.pem"))
    add_to_server(server, db)   # no semantic search configured: words only, and it says so
    port = bind(server, "127.0.0.1:0", grpc_security("search"))
    await server.start()
    user = (("authorization", f"Bearer {make_token(world.tenant_a)}"),)
    try:
        async with aio_channel(f"127.0.0.1:{port}", "gateway", "search") as channel:
            stub = search_pb2_grpc.SearchStub(channel)  # type: ignore[no-untyped-call]
            resp = await stub.Search(search_pb2.SearchRequest(
                tenant_id=world.tenant_a, query="발소리", file_types=["pdf"], uploaded_from="2026-03-01",
                sort="date"), timeout=30, metadata=user)
            assert [h.id for h in resp.hits] == [world.docs["noise2"]]
            assert resp.retrieval == "lexical" and resp.degraded_reason == "semantic search is not configured"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Search(search_pb2.SearchRequest(tenant_id=world.tenant_a, query="x", uploaded_to="soon"),
                                  timeout=30, metadata=user)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details().startswith("uploaded_to:")
    finally:
        await server.stop(0)
        await db.close()


@pytest.mark.parametrize(("q", "filters", "offset"), [
    ("소음 발소리 사기", {}, 0),
    ("소음 발소리 사기", {}, 2),
    ("예산 교통 -카메라", {"types": ["hwp", "txt", "pdf"]}, 0),
    ('"보호구역 교통사고" 어린이', {"uploaded_from": "2026-01-01"}, 0),
    ("층간소음", {"pii": False}, 0),
    ("이웃", {}, 0),             # one lexical match: the semantic-only candidates fill the page
    ("그리고", {}, 0),           # no term left: semantic candidates alone
])
async def test_hybrid_in_two_statements_answers_exactly_as_one(world: World, test_db_name: str, key_dir: Path,
                                                               q: str, filters: dict, offset: int) -> None:
    """The search service runs the lexical half while the query is embedded and then fuses the rows it
    got back (`lexical_sql`, then `sql` given them): page, scores, total and facets must be those of the
    single statement, for every shape of query."""
    db = Database(_settings(test_db_name, key_dir).dsn(), max_size=2)
    await db.open()
    params = dataclasses.replace(query.validate(q, None, 2, None, **filters), offset=offset)
    analyzed = morph.analyze_query(q)
    ranked = [world.docs[k] for k in ("traffic", "noise2", "budget", "noise", "phishing")]
    ids = (*ranked, world.deleted_noise, world.b_noise, world.unembedded)   # the last three: filtered out
    semantic = query.Semantic(ids, tuple(0.95 - 0.02 * i for i in range(len(ids))), query.Fusion(min_sim=0.9))

    def plan(lexical: query.LexicalCandidates | None = None) -> query.SearchPlan:
        return query.build_plan(params, analyzed.terms, analyzed.excluded, analyzed.phrases, semantic, lexical=lexical)

    try:
        async with db.tenant_transaction(world.tenant_a) as conn:
            single = await (await conn.execute(plan().sql, engine.statement_values(plan(), params))).fetchall()
            first = plan()
            assert first.lexical_sql is not None
            lexical = await (await conn.execute(first.lexical_sql, engine.statement_values(first, params))).fetchone()
            assert lexical is not None
            given = plan(query.LexicalCandidates(lexical["lex_ids"], lexical["lex_created"], lexical["lex_scores"]))
            split = await (await conn.execute(given.sql, engine.statement_values(given, params))).fetchall()
    finally:
        await db.close()
    assert lexical["term_figures"] is not None or not analyzed.terms
    for row in single:
        del row["term_figures"], row["n_documents"]
    for row in split:
        del row["term_figures"], row["n_documents"]
    assert split == single
    assert single and single[0]["total"] > 0, "every case finds something, so the comparison is not empty"


async def test_a_tenant_above_the_threshold_is_searched_through_the_ann_index(
        world: World, admin_dsn: str, test_db_name: str, key_dir: Path, tmp_path: Path,
        make_token) -> None:  # type: ignore[no-untyped-def]
    tenant = create_tenant(admin_dsn, f"ann-{uuid.uuid4().hex[:6]}")
    vectors = dict(zip(DOCS, embed(world.model_serving, [passage_text(t, x) for t, x, _, _ in DOCS.values()]),
                       strict=True))
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        docs = {key: _insert(conn, tenant, title, text, created, filename, vectors[key])
                for key, (title, text, created, filename) in DOCS.items()}
    settings = _settings(test_db_name, key_dir, model_grpc_target=world.model_serving, embed_timeout_ms=60_000,
                         ann_threshold=3, vector_full_reload_s=3600, state_dir=tmp_path)
    cache = make_cache(settings)
    app = build_app(settings, Database(settings.dsn(), max_size=4), cache=cache)
    headers = _auth(make_token, tenant)
    async with app.router.lifespan_context(app):
        await app.state.analyser.wait()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://search") as c:
            # The first query loads the vectors and is answered exactly while the index is built.
            first = await _search(c, headers, q="보이스피싱 신고")
            assert first["retrieval"] == "hybrid" and first["hits"][0]["id"] == docs["phishing"]
            await cache.settle()
            assert cache.serving(tenant) == ("ann", 5)
            body = await _search(c, headers, q="보이스피싱 신고")
            assert [h["id"] for h in body["hits"]] == [h["id"] for h in first["hits"]], "same answer as exact"
            assert set(h["id"] for h in body["hits"]) <= set(docs.values()), "only this tenant's documents"
            other = await _search(c, _auth(make_token, world.tenant_a), q="보이스피싱 신고")
            assert other["hits"][0]["id"] == world.docs["phishing"]
            assert not set(h["id"] for h in other["hits"]) & set(docs.values())
            small = await _search(c, _auth(make_token, world.tenant_b), q="위층 소음")
            assert [h["id"] for h in small["hits"]] == [world.b_noise]
            await cache.settle()
            assert cache.serving(world.tenant_b) == ("exact", 1), "below the threshold: scored exactly"
            r = await c.get(f"/api/v1/documents/{docs['noise']}/similar", headers=headers)
            similar = [h["id"] for h in r.json()["hits"]]
            assert similar[0] == docs["noise2"] and docs["noise"] not in similar
            # Deleted after the index was built: still in the index, never returned.
            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                conn.execute("UPDATE documents.documents SET deleted_at = now() WHERE id = %s", (docs["phishing"],))
                # a newly tagged document reaches the index by the next refresh
                late = _insert(conn, tenant, "보이스피싱 주의", "검찰 사칭 전화에 속아 돈을 보냈습니다.", "2026-04-02",
                               "late.txt", vectors["phishing"])
            body = await _search(c, headers, q="보이스피싱 신고")
            ids = [h["id"] for h in body["hits"]]
            assert docs["phishing"] not in ids and ids[0] == late
            # Once the margin for late commits has passed, refreshes (every query here) read nothing
            # more while nothing is written, however recent the newest row is.
            cache.late_commit_margin = timedelta(seconds=0.5)
            await asyncio.sleep(0.6)
            await _search(c, headers, q="보이스피싱 신고")
            await asyncio.sleep(0.6)
            read = VECTORS_READ._value.get()
            for _ in range(3):
                await _search(c, headers, q="보이스피싱 신고")
            assert VECTORS_READ._value.get() == read, "rows read again on every refresh"
            cache.late_commit_margin = timedelta(seconds=60)
            r = await c.get(f"/api/v1/documents/{late}/similar", headers=headers)
            assert docs["phishing"] not in [h["id"] for h in r.json()["hits"]]
            assert cache.serving(tenant) == ("ann", 6), "the deleted one stays until the full reload"
            # The full reload (in the background) drops it; restored from the bin, it comes back.
            for restore, expected in ((False, 5), (True, 6)):
                if restore:
                    with psycopg.connect(admin_dsn, autocommit=True) as conn:
                        conn.execute("UPDATE documents.documents SET deleted_at = NULL WHERE id = %s",
                                     (docs["phishing"],))
                cache.full_reload_s = 0
                await _search(c, headers, q="층간소음")
                await cache.settle()
                cache.full_reload_s = 3600
                assert cache.serving(tenant) == ("ann", expected)
            body = await _search(c, headers, q="보이스피싱 신고")
            assert {h["id"] for h in body["hits"][:2]} == {late, docs["phishing"]}
            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                conn.execute("UPDATE documents.documents SET deleted_at = now() WHERE id = %s", (docs["phishing"],))
            cache.full_reload_s = 0
            await _search(c, headers, q="층간소음")
            await cache.settle()
            cache.full_reload_s = 3600
            assert cache.serving(tenant) == ("ann", 5)
    # A restarted replica starts from the index it saved (no build), up to date from its watermark.
    saved = sorted(p.suffix for p in (tmp_path / "search-index").glob(f"{tenant}-*"))
    assert saved == [".json", ".usearch"]
    for damaged in (False, True):
        if damaged:   # a damaged file: read from PostgreSQL and built again, never a failed search
            index_file = next((tmp_path / "search-index").glob(f"{tenant}-*.usearch"))
            index_file.write_bytes(index_file.read_bytes()[:1000])
        cache = make_cache(settings)
        app = build_app(settings, Database(settings.dsn(), max_size=2), cache=cache)
        async with app.router.lifespan_context(app):
            await app.state.analyser.wait()
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://search") as c:
                body = await _search(c, headers, q="보이스피싱 신고")
                assert body["retrieval"] == "hybrid" and body["hits"][0]["id"] == late
                if not damaged:
                    assert cache.serving(tenant) == ("ann", 5), "served by the saved index at once"
                await cache.settle()
                assert cache.serving(tenant) == ("ann", 5)
        if damaged:
            assert index_file.stat().st_size > 1000, "built again and saved"


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, test_db_name: str):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DOCTAG_DB_NAME", test_db_name)

    def run(*argv: str) -> int:
        monkeypatch.setattr("sys.stdin", io.StringIO(""))
        return main(list(argv))

    return run


def test_reindex_redoes_stale_analyser_versions_and_embeddings(world: World, admin_dsn: str, cli, capsys) -> None:  # type: ignore[no-untyped-def]
    slug = f"stale-{uuid.uuid4().hex[:6]}"
    tenant = create_tenant(admin_dsn, slug)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        fresh = _insert(conn, tenant, "교통 안전", "어린이 보호구역", "2026-01-01", "a.txt")
        old = _insert(conn, tenant, "청사 이전", "세종 청사로 옮긴다.", "2026-01-02", "b.txt")
        # `old` was indexed by an earlier analyser and has an embedding of an older method.
        conn.execute("UPDATE documents.documents SET analyser_version = 'kiwi-0.1/rules-0' WHERE id = %s", (old,))
        stale = embed(world.model_serving, ["청사 이전"])[0]
        conn.execute(repo.UPSERT_EMBEDDING_SQL, (old, stale.model, "passage/1x64/mean", stale.dim, stale.vector))
    # Without model-serving only the postings are brought up to date, and it says why.
    assert cli("search", "reindex", "--tenant", slug) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["documents"] == 1 and out["embeddings"] == 0 and "unavailable" in out["embeddings_skipped"]
    assert cli("search", "reindex", "--tenant", slug, "--model-serving", world.model_serving) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["documents"] == 0 and out["embeddings"] == 2, "the stale and the missing embedding"
    with psycopg.connect(admin_dsn) as conn:
        rows = conn.execute(
            "SELECT d.id, d.analyser_version, e.version FROM documents.documents d "
            "JOIN documents.document_embeddings e ON e.document_id = d.id WHERE d.tenant_id = %s", (tenant,)).fetchall()
    assert {str(r[0]) for r in rows} == {fresh, old}
    assert all(r[1] == analyser_version() and r[2] == "passage/2x256/mean" for r in rows)
    assert cli("search", "reindex", "--tenant", slug, "--model-serving", world.model_serving) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["documents"] == 0 and out["embeddings"] == 0, "nothing stale is left"


def test_eval_reports_hybrid_lexical_and_baselines(world: World, cli, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    corpus, queries, qrels = tmp_path / "c.jsonl", tmp_path / "q.jsonl", tmp_path / "r.tsv"
    corpus.write_text("".join(json.dumps({"id": k, "title": t, "text": x}, ensure_ascii=False) + "\n"
                              for k, (t, x, _, _) in DOCS.items()), encoding="utf-8")
    queries.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in (
        {"id": "q1", "text": "보이스피싱 신고"}, {"id": "q2", "text": "예산"}, {"id": "q3", "text": "층간소음"})),
        encoding="utf-8")
    qrels.write_text("q1\tphishing\t2\nq2\tbudget\t2\nq3\tnoise\t2\nq3\tnoise2\t1\n", encoding="utf-8")
    assert cli("search", "eval", "--corpus", str(corpus), "--queries", str(queries), "--qrels", str(qrels),
               "--baselines", "--model-serving", world.model_serving) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["retrieval"] == "hybrid" and result["degraded_queries"] == 0 and result["documents"] == 5
    # The paraphrase query has no word in common with its document: words alone miss it.
    assert result["lexical_only"]["zero_hit_share"] > 0 and result["zero_hit_share"] == 0
    assert result["mrr@10"] > result["lexical_only"]["mrr@10"]
    assert set(result["baselines"]) == {"bm25_kiwi", "tantivy_hangul_bigrams"}
    for metrics in (result, result["lexical_only"], *result["baselines"].values()):
        assert {"ndcg@10", "recall@10", "mrr@10", "zero_hit_share", "queries"} <= set(metrics)


def test_embed_batches_like_the_reference_path_and_refuses_bad_requests(world: World) -> None:
    from services.common.pb import model_serving_pb2, model_serving_pb2_grpc
    from services.model_serving.models.base import InferenceOptions, _probabilities
    from services.model_serving.models.embedder import E5Embedder

    texts = [passage_text(t, x) for t, x, _, _ in DOCS.values()]
    served = np.stack([as_array(e) for e in embed(world.model_serving, texts)])
    reference_model = E5Embedder.load(InferenceOptions(onnx=False))
    reference = _probabilities(reference_model, reference_model.prepare_mode(texts, "passage"), 16)
    assert np.allclose(served, reference, atol=1e-4), "batched ONNX serving equals the unbatched torch path"
    with sync_channel(world.model_serving, "tagging-worker", "model-serving") as channel:
        stub = model_serving_pb2_grpc.ModelServingStub(channel)  # type: ignore[no-untyped-call]
        query_mode = model_serving_pb2.EMBED_MODE_QUERY
        for request, field_name in ((model_serving_pb2.EmbedRequest(texts=["예산"]), "mode"),
                                    (model_serving_pb2.EmbedRequest(mode=query_mode), "texts"),
                                    (model_serving_pb2.EmbedRequest(texts=[" "], mode=query_mode), "texts.0")):
            with pytest.raises(grpc.RpcError) as info:
                stub.Embed(request, timeout=60)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details().startswith(field_name)
