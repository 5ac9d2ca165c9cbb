"""Search service against the real PostgreSQL: HTTP API, gRPC, tenant isolation, RLS.

Documents are inserted as the admin (as the upload service would leave them), indexed
with the same Korean analyser and repository SQL (tests/search_index.py); the service
reads as doctag_search.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.db import Database
from services.common.grpc_utils import add_health, bind, create_server, set_serving
from services.common.korean import analyze
from services.common.pb import search_pb2, search_pb2_grpc
from services.search import engine, query
from services.search.api import build_app
from services.search.grpc_service import SERVICE_NAME, add_to_server
from services.search.morph import Analyser
from services.search.settings import SearchSettings
from tests.conftest import DATA, create_tenant
from tests.search_index import index_document
from tests.support import aio_channel, grpc_security

pytestmark = pytest.mark.integration

N_PETITIONS = 60


@dataclass
class Seed:
    tenant_a: str
    tenant_b: str
    tenant_empty: str
    docs: dict[str, str] = field(default_factory=dict)            # key -> id (tenant A)
    b_budget_id: str = ""
    petitions: dict[str, dict[str, str]] = field(default_factory=dict)  # id -> {title, text, label}


def _insert(conn: psycopg.Connection, tenant: str, title: str, text: str | None,
            tags: dict[str, float], status: str = "tagged") -> str:
    doc_id = str(uuid.uuid4())
    body = (text or "").encode()
    conn.execute(
        "INSERT INTO documents.documents (id, tenant_id, title, filename, content_type, size_bytes, sha256, status,"
        " text_content) VALUES (%s, %s, %s, %s, 'text/plain', %s, %s, %s, %s)",
        (doc_id, tenant, title, f"{title}.txt", len(body), hashlib.sha256(body).hexdigest(), status, text),
    )
    index_document(conn, tenant, doc_id, title, text)
    for tag, score in tags.items():
        conn.execute(
            "INSERT INTO documents.document_tags (tenant_id, document_id, tag, score, model_version)"
            " VALUES (%s, %s, %s, %s, 'test-1')", (tenant, doc_id, tag, score))
    return doc_id


@pytest.fixture(scope="module")
def seed(admin_dsn: str) -> Seed:
    s = Seed(tenant_a=create_tenant(admin_dsn, f"search-a-{uuid.uuid4().hex[:6]}"),
             tenant_b=create_tenant(admin_dsn, f"search-b-{uuid.uuid4().hex[:6]}"),
             tenant_empty=create_tenant(admin_dsn, f"search-c-{uuid.uuid4().hex[:6]}"))
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        a = s.tenant_a
        s.docs["budget"] = _insert(conn, a, "2025년 재정 운용 방향",
                                   "정부는 내년도 예산을 크게 늘렸다. 복지 분야 지출이 증가했다.",
                                   {"경제": 0.91, "정치": 0.42})
        s.docs["digital"] = _insert(conn, a, "디지털정부혁신 추진계획",
                                    "행정안전부는 디지털정부혁신 추진계획을 발표했다. "
                                    "공공서비스를 온라인으로 제공한다.",
                                    {"행정": 0.83, "IT과학": 0.71})
        s.docs["traffic"] = _insert(conn, a, "어린이 교통 안전 대책",
                                    "어린이 보호구역 교통사고를 줄이기 위한 대책이다. 그러나 예산이 부족하다.",
                                    {"교통/건축/국토": 0.95, "행정": 0.31})
        s.docs["queued"] = _insert(conn, a, "예산 요청서", None, {}, status="queued")
        s.docs["percent"] = _insert(conn, a, "성과 보고_2024", "목표 달성률 100%를 기록했다.", {"행정": 0.5})
        s.docs["license"] = _insert(conn, a, "운전면허 갱신 안내", "운전면허 적성검사 기간을 확인하세요.",
                                    {"교통/건축/국토": 0.6})
        s.docs["exam"] = _insert(conn, a, "면허 시험 일정", "운전 면허 시험은 매월 둘째 주에 열린다.",
                                 {"교통/건축/국토": 0.5})
        s.docs["w2"] = _insert(conn, a, "연말정산 서류", "미국 근무자는 W-2 양식과 401(k) 명세서를 낸다.",
                               {"경제": 0.4})
        s.docs["taxonomy"] = _insert(conn, a, "taxonomy 분류 체계", "문서 taxonomy를 정비한다.", {"행정": 0.3})
        s.docs["html"] = _insert(conn, a, "웹 공지", '<script>alert("x")</script> 보육 <b>지원금</b> 안내',
                                 {"행정": 0.2})
        rows = [json.loads(line) for line in (DATA / "petitions_train.jsonl").open(encoding="utf-8")][:N_PETITIONS]
        for row in rows:
            doc_id = _insert(conn, a, row["title"], row["text"], {row["label"]: 0.88, "청원": 0.99})
            s.petitions[doc_id] = row
        # Tenant B holds the same budget document: isolation must hide it from A and vice versa.
        s.b_budget_id = _insert(conn, s.tenant_b, "2025년 재정 운용 방향",
                                "정부는 내년도 예산을 크게 늘렸다. 복지 분야 지출이 증가했다.", {"경제": 0.9})
    return s


@pytest.fixture
def settings(test_db_name: str, key_dir: Path) -> SearchSettings:
    return SearchSettings(db_name=test_db_name, jwt_public_key_file=key_dir / "jwt_public.pem")


@pytest.fixture
async def db(settings: SearchSettings) -> AsyncIterator[Database]:
    database = Database(settings.dsn(), max_size=4)
    await database.open()
    yield database
    await database.close()


@pytest.fixture
async def client(settings: SearchSettings, seed: Seed) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(settings, Database(settings.dsn(), max_size=4))
    async with app.router.lifespan_context(app):
        await app.state.analyser.wait()  # what /readyz waits for in a running replica
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://search") as c:
            yield c


def _auth(make_token, tenant: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"Authorization": f"Bearer {make_token(tenant)}"}


async def _search(client: httpx.AsyncClient, headers: dict[str, str], **params: object) -> dict:
    r = await client.get("/api/v1/search", params=params, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def _ids(body: dict) -> list[str]:
    return [h["id"] for h in body["hits"]]


# ------------------------------------------------------------------ Korean full text

async def test_noun_matches_other_inflection(client, seed, make_token) -> None:  # type: ignore[no-untyped-def]
    h = _auth(make_token, seed.tenant_a)
    body = await _search(client, h, q="예산")
    ids = _ids(body)
    # 예산을 (budget), 예산이 (traffic), title 예산 (queued, no text yet).
    assert {seed.docs["budget"], seed.docs["traffic"], seed.docs["queued"]} <= set(ids)
    assert seed.b_budget_id not in ids
    hit = next(x for x in body["hits"] if x["id"] == seed.docs["budget"])
    assert "예산을" in hit["snippet"]
    assert hit["tags"] == [{"tag": "경제", "score": 0.91}, {"tag": "정치", "score": 0.42}]
    assert hit["status"] == "tagged" and hit["title"] == "2025년 재정 운용 방향"
    queued = next(x for x in body["hits"] if x["id"] == seed.docs["queued"])
    assert queued["snippet"] == "<mark>예산</mark> 요청서" and queued["status"] == "queued" and queued["tags"] == []
    assert "<mark>예산을</mark>" in hit["snippet"]
    # The query's own inflection does not matter either.
    assert set(_ids(await _search(client, h, q="예산을"))) >= {seed.docs["budget"], seed.docs["traffic"]}


async def test_verb_stem_matches_past_tense(client, seed, make_token) -> None:  # type: ignore[no-untyped-def]
    body = await _search(client, _auth(make_token, seed.tenant_a), q="늘리다")
    hit = next(x for x in body["hits"] if x["id"] == seed.docs["budget"])
    assert "<mark>늘렸다</mark>" in hit["snippet"]
    assert hit["score"] > 0


async def test_any_term_matches_and_more_matched_terms_rank_higher(client, seed, make_token) -> None:  # type: ignore[no-untyped-def]
    h = _auth(make_token, seed.tenant_a)
    body = await _search(client, h, q="예산 교통사고")
    ids = _ids(body)
    # traffic has both words; budget only one of them: still a hit, ranked lower.
    assert ids[0] == seed.docs["traffic"]
    assert seed.docs["budget"] in ids
    either = set(_ids(await _search(client, h, q="예산 디지털", limit=100)))
    assert {seed.docs["budget"], seed.docs["traffic"], seed.docs["digital"]} <= either
    # A word no document has does not empty the result.
    assert seed.docs["budget"] in _ids(await _search(client, h, q="예산 우주정거장"))
    # OR is accepted and changes nothing: every query is OR already.
    assert _ids(await _search(client, h, q="예산 OR 디지털", limit=100)) == \
        _ids(await _search(client, h, q="예산 디지털", limit=100))


async def test_rarer_terms_weigh_more(client, seed, make_token) -> None:  # type: ignore[no-untyped-def]
    h = _auth(make_token, seed.tenant_a)
    # 국민 is in many petitions, 적성검사 in one document: that document comes first.
    body = await _search(client, h, q="국민 적성검사")
    assert body["hits"][0]["id"] == seed.docs["license"]


@pytest.mark.parametrize("q", ["무엇인가요", "을", "를", "어디에 있나요?", "정의는 무엇이야", "누가"])
async def test_stop_words_and_particles_alone_match_nothing(client, seed, make_token, q) -> None:  # type: ignore[no-untyped-def]
    body = await _search(client, _auth(make_token, seed.tenant_a), q=q)
    assert {k: body[k] for k in ("hits", "total", "next_cursor", "facets")} == {
        "hits": [], "total": 0, "next_cursor": None, "facets": {"tags": []}}


async def test_questions_find_their_content_words(client, seed, make_token) -> None:  # type: ignore[no-untyped-def]
    h = _auth(make_token, seed.tenant_a)
    assert _ids(await _search(client, h, q="디지털정부혁신이란 무엇인가요?"))[0] == seed.docs["digital"]
    assert seed.docs["license"] in _ids(await _search(client, h, q="운전면허 적성검사는 어디서 하나요"))


async def test_compounds_meet_written_together_or_apart(client, seed, make_token) -> None:  # type: ignore[no-untyped-def]
    h = _auth(make_token, seed.tenant_a)
    apart = _ids(await _search(client, h, q="운전 면허"))
    together = _ids(await _search(client, h, q="운전면허"))
    assert {seed.docs["license"], seed.docs["exam"]} <= set(apart)
    assert {seed.docs["license"], seed.docs["exam"]} <= set(together)
    # Written as the query writes it ranks first.
    assert together[0] == seed.docs["license"]


async def test_codes_match_whole(client, seed, make_token) -> None:  # type: ignore[no-untyped-def]
    h = _auth(make_token, seed.tenant_a)
    for q in ("W2", "w-2", "401(k)", "401k"):
        body = await _search(client, h, q=q)
        assert _ids(body) == [seed.docs["w2"]], q
    hit = (await _search(client, h, q="W2"))["hits"][0]
    assert "<mark>W-2</mark>" in hit["snippet"]
    # A Latin word matches words, not the inside of longer words.
    assert seed.docs["taxonomy"] not in _ids(await _search(client, h, q="tax"))
    assert _ids(await _search(client, h, q="taxonomy")) == [seed.docs["taxonomy"]]


async def test_phrase_must_occur(client, seed, make_token) -> None:  # type: ignore[no-untyped-def]
    h = _auth(make_token, seed.tenant_a)
    body = await _search(client, h, q='"교통 안전"')
    assert _ids(body) == [seed.docs["traffic"]] and body["relaxed_phrases"] == []
    # A phrase and a free word: the phrase filters, the word ranks.
    assert _ids(await _search(client, h, q='"내년도 예산" 복지')) == [seed.docs["budget"]]


async def test_a_phrase_no_document_contains_is_ranked_by_its_words(  # type: ignore[no-untyped-def]
        client, seed, make_token) -> None:
    h = _auth(make_token, seed.tenant_a)
    # The same words in another order are not the phrase: no document contains it, so its words are
    # ranked instead, and the answer says which phrase was relaxed.
    body = await _search(client, h, q='"안전 교통"')
    assert body["relaxed_phrases"] == ["안전 교통"]
    assert _ids(body)[0] == seed.docs["traffic"] and body["total"] >= 1
    assert "<mark>교통" in body["hits"][0]["snippet"]
    # Exclusions still hold in the relaxed answer...
    body = await _search(client, h, q='"안전 교통" -예산')
    assert seed.docs["traffic"] not in _ids(body)
    # ...and so do filters: nothing tagged 경제 has the words, so the answer stays empty and says
    # nothing was relaxed.
    body = await _search(client, h, q='"안전 교통"', tag="경제")
    assert body["total"] == 0 and body["hits"] == [] and body["relaxed_phrases"] == []


async def test_minus_excludes(client, seed, make_token) -> None:  # type: ignore[no-untyped-def]
    h = _auth(make_token, seed.tenant_a)
    ids = _ids(await _search(client, h, q="예산 -교통"))
    assert seed.docs["budget"] in ids and seed.docs["traffic"] not in ids
    # Exclusion is by analysed term: -교통사고 also drops documents with 교통사고 in any inflection.
    assert seed.docs["traffic"] not in _ids(await _search(client, h, q="예산 -교통사고를"))
    # Only exclusions: nothing to rank by, nothing found.
    assert (await _search(client, h, q="-예산"))["total"] == 0


async def test_snippets_are_escaped_html_with_marks(client, seed, make_token) -> None:  # type: ignore[no-untyped-def]
    hit = (await _search(client, _auth(make_token, seed.tenant_a), q="지원금"))["hits"][0]
    assert hit["id"] == seed.docs["html"]
    assert "&lt;script&gt;" in hit["snippet"] and "<script>" not in hit["snippet"]
    assert "&lt;b&gt;<mark>지원금</mark>&lt;/b&gt;" in hit["snippet"]
    assert hit["snippet"].replace("<mark>", "").replace("</mark>", "").count("<") == 0


async def test_partial_word_matches_by_substring_with_lower_score(client, seed, make_token) -> None:  # type: ignore[no-untyped-def]
    """When no term matches, a Hangul term may still occur inside a word (a fallback, scored low).
    (A fragment Kiwi reads as a word, such as 디지 -> 디다, is searched as that word instead.)"""
    h = _auth(make_token, seed.tenant_a)
    body = await _search(client, h, q="정부혁")  # the middle of 디지털정부혁신
    assert _ids(body) == [seed.docs["digital"]]
    assert 0 < body["hits"][0]["score"] <= query.SUBSTRING_SCORE
    assert "디지털정부혁신" in body["hits"][0]["snippet"]
    full = await _search(client, h, q="정부혁신")
    assert full["hits"][0]["id"] == seed.docs["digital"] and full["hits"][0]["score"] > body["hits"][0]["score"]


async def test_known_words_excluded_by_a_filter_are_not_searched_again_inside_words(  # type: ignore[no-untyped-def]
        client, seed, make_token) -> None:
    """The partial-word fallback stands in for words the index does not know. Words it knows that the
    filters left without a match are not looked for as substrings (a scan of every text: seconds at scale)."""
    h = _auth(make_token, seed.tenant_a)
    r = await client.get("/api/v1/search", params={"q": "정부혁신", "from": "2999-01-01"}, headers=h)
    assert r.status_code == 200 and r.json()["total"] == 0
    assert "page" in r.headers["server-timing"] and "fallback" not in r.headers["server-timing"]
    # An unknown fragment under the same filter is still looked for inside words (and finds nothing there).
    r = await client.get("/api/v1/search", params={"q": "정부혁", "from": "2999-01-01"}, headers=h)
    assert r.json()["total"] == 0 and "fallback" in r.headers["server-timing"]
    r = await client.get("/api/v1/search", params={"q": "정부혁"}, headers=h)
    assert _ids(r.json()) == [seed.docs["digital"]] and "fallback" in r.headers["server-timing"]


async def test_title_match_ranks_above_text_only_match(client, seed, make_token) -> None:  # type: ignore[no-untyped-def]
    body = await _search(client, _auth(make_token, seed.tenant_a), q="교통")
    ids = _ids(body)
    assert ids[0] == seed.docs["traffic"]  # in the title as well as the text


async def test_like_wildcards_are_literal(client, seed, make_token) -> None:  # type: ignore[no-untyped-def]
    h = _auth(make_token, seed.tenant_a)
    assert _ids(await _search(client, h, q="달성률 100%"))[0] == seed.docs["percent"]
    assert _ids(await _search(client, h, q="보고_2024"))[0] == seed.docs["percent"]
    # Unescaped, these would be wildcards matching every document.
    assert (await _search(client, h, q="%%"))["total"] == 0
    assert (await _search(client, h, q="__"))["total"] == 0


@pytest.mark.parametrize("hostile", [
    "예산' & !( | :*", "예산 | 교통", "!예산", "예산:*", "'; DROP TABLE documents.documents; --", "\\", "((",
    '"예산\\s*.*" 예산', "예산 -.*",
])
async def test_query_syntax_and_sql_is_inert(client, seed, make_token, hostile: str) -> None:  # type: ignore[no-untyped-def]
    h = _auth(make_token, seed.tenant_a)
    body = await _search(client, h, q=hostile)
    ids = _ids(body)
    if "예산" in hostile and "교통" in hostile:
        assert ids[0] == seed.docs["traffic"]  # both words
    elif "예산" in hostile and '"' not in hostile:
        assert seed.docs["budget"] in ids  # '!' did not negate, ':*' did not widen
    elif '"' in hostile:
        # The phrase is literal: no document contains it, so its words are ranked instead.
        assert body["relaxed_phrases"] == ["예산\\s*.*"] and seed.docs["budget"] in ids
    assert seed.b_budget_id not in ids
    # The table is still there.
    assert (await _search(client, h, q="예산"))["total"] >= 3


# ------------------------------------------------------------------ tags and facets

async def test_tag_filters_require_every_tag(client, seed, make_token) -> None:  # type: ignore[no-untyped-def]
    h = _auth(make_token, seed.tenant_a)
    body = await _search(client, h, tag="행정")
    assert set(_ids(body)) >= {seed.docs["digital"], seed.docs["traffic"], seed.docs["percent"]}
    # Without q, ranked by the confidence of the requested tag.
    tag_scores = [next(t["score"] for t in hit["tags"] if t["tag"] == "행정") for hit in body["hits"]]
    assert tag_scores == sorted(tag_scores, reverse=True)
    assert [round(hit["score"], 4) for hit in body["hits"]] == tag_scores
    assert _ids(await _search(client, h, tag=["행정", "교통/건축/국토"])) == [seed.docs["traffic"]]
    assert _ids(await _search(client, h, q="예산", tag="경제")) == [seed.docs["budget"]]
    assert (await _search(client, h, tag=["행정", "경제"]))["total"] == 0


@pytest.mark.parametrize(("q", "tags"), [
    ("예산", ["경제"]), ("대책 예산 -보호구역", ["교통/건축/국토"]), ("정부 국민", ["청원"]),
    ("정부 국민", ["청원", "행정"]), ("zyxwvq", ["행정"]), ("정부 국민", []), ("대책 예산 -보호구역", []),
])
async def test_exhaustive_candidates_are_those_of_reading_every_posting(seed: Seed, db: Database, q: str,
                                                                       tags: list[str]) -> None:
    """The exhaustive plan (every posting; under tag filters, the postings of the tags' documents, without a
    tag check per candidate) must answer as the ranked plan does when it reads every posting of each term
    and checks each candidate's tags: the same page, scores, total and facets."""
    from services.search import morph

    params = query.validate(q, tags, 5, None)
    analyzed = morph.analyze_query(q)
    answers = []
    for per_term in (1_000_000, None):
        plan = query.build_plan(params, analyzed.terms, analyzed.excluded, analyzed.phrases, per_term=per_term)
        async with db.tenant_transaction(seed.tenant_a) as conn:
            answers.append(await (await conn.execute(plan.sql, engine.statement_values(plan, params))).fetchall())
    every_posting, exhaustive = answers
    assert exhaustive == every_posting
    assert (every_posting[0]["total"] > 0) == (q != "zyxwvq")


async def test_pii_filter_keeps_documents_with_or_without_personal_data(  # type: ignore[no-untyped-def]
        client, seed, make_token, admin_dsn) -> None:
    """`pii=true` finds the documents in which personal data was found (migration 0006's counts), `false`
    the others; the filter combines with the query, works alone, and its cursor is its own."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE documents.documents SET pii = '{\"mobile\": 1}' WHERE id = %s",
                     (seed.docs["traffic"],))
    try:
        h = _auth(make_token, seed.tenant_a)
        assert _ids(await _search(client, h, q="예산", pii="true")) == [seed.docs["traffic"]]
        without = _ids(await _search(client, h, q="예산", pii="false"))
        assert seed.docs["budget"] in without and seed.docs["traffic"] not in without
        assert _ids(await _search(client, h, pii="true")) == [seed.docs["traffic"]]
        page = await _search(client, h, q="예산", pii="false", limit=1)
        assert page["next_cursor"]
        other = await client.get("/api/v1/search", headers=h,
                                 params={"q": "예산", "pii": "true", "cursor": page["next_cursor"]})
        assert other.status_code == 422 and other.json()["errors"][0]["field"] == "cursor"
        bad = await client.get("/api/v1/search", headers=h, params={"q": "예산", "pii": "maybe"})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "pii"
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute("UPDATE documents.documents SET pii = '{}' WHERE id = %s", (seed.docs["traffic"],))


async def test_facets_count_all_matches_not_just_the_page(client, seed, make_token) -> None:  # type: ignore[no-untyped-def]
    h = _auth(make_token, seed.tenant_a)
    body = await _search(client, h, q="예산", limit=1)
    assert len(body["hits"]) == 1 and body["total"] >= 3 and body["next_cursor"]
    facets = {f["tag"]: f["count"] for f in body["facets"]["tags"]}
    assert facets["경제"] >= 1 and facets["교통/건축/국토"] >= 1 and facets["행정"] >= 1
    # Petitions: every one carries 청원, so its facet equals the number of matching petitions.
    body = await _search(client, h, tag="청원", limit=3)
    facets = {f["tag"]: f["count"] for f in body["facets"]["tags"]}
    assert body["total"] == N_PETITIONS == facets["청원"]
    labels: dict[str, int] = {}
    for row in seed.petitions.values():
        labels[row["label"]] = labels.get(row["label"], 0) + 1
    assert {k: v for k, v in facets.items() if k != "청원"} == labels
    counts = [f["count"] for f in body["facets"]["tags"]]
    assert counts == sorted(counts, reverse=True)


# ------------------------------------------------------------------ pagination

async def test_cursor_pages_cover_every_hit_exactly_once(client, seed, make_token) -> None:  # type: ignore[no-untyped-def]
    h = _auth(make_token, seed.tenant_a)
    everything = await _search(client, h, q="국민", limit=100)
    total = everything["total"]
    assert 20 < total <= 100 and everything["next_cursor"] is None
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, object] = {"q": "국민", "limit": 7}
        if cursor:
            params["cursor"] = cursor
        body = await _search(client, h, **params)
        assert body["total"] == total
        seen.extend(_ids(body))
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert len(body["hits"]) == 7
    assert pages == -(-total // 7)
    assert len(seen) == len(set(seen)) == total
    assert seen == _ids(everything)
    # Every hit really contains the word (as a morpheme or a substring).
    for doc_id in seen:
        row = seed.petitions[doc_id]
        assert "국민" in analyze(row["title"] + "\n" + row["text"]) or "국민" in row["title"] + row["text"]
    scores = [x["score"] for x in everything["hits"]]
    assert scores == sorted(scores, reverse=True)


async def test_cursor_of_another_query_is_rejected(client, seed, make_token) -> None:  # type: ignore[no-untyped-def]
    h = _auth(make_token, seed.tenant_a)
    cursor = (await _search(client, h, q="국민", limit=5))["next_cursor"]
    r = await client.get("/api/v1/search", params={"q": "청원", "cursor": cursor}, headers=h)
    assert r.status_code == 422
    assert r.json()["errors"] == [{"field": "cursor", "message": "the cursor was altered or belongs to a different "
                                                             "query or tenant; use next_cursor from a previous page"}]


# ------------------------------------------------------------------ isolation

async def test_other_tenant_sees_only_its_own_documents(client, seed, make_token) -> None:  # type: ignore[no-untyped-def]
    body_b = await _search(client, _auth(make_token, seed.tenant_b), q="예산")
    assert _ids(body_b) == [seed.b_budget_id]
    assert body_b["facets"]["tags"] == [{"tag": "경제", "count": 1}]
    body_c = await _search(client, _auth(make_token, seed.tenant_empty), q="예산")
    assert body_c["total"] == 0 and body_c["hits"] == []
    assert (await _search(client, _auth(make_token, seed.tenant_b), tag="청원"))["total"] == 0
    # A tenant that does not exist at all sees nothing either.
    assert (await _search(client, _auth(make_token, str(uuid.uuid4())), q="예산"))["total"] == 0


def test_search_role_without_tenant_sees_no_rows(seed, settings: SearchSettings) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(settings.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "doctag_search"
        for table in ("documents", "document_tags", "document_terms", "search_stats"):
            assert conn.execute(f"SELECT count(*) FROM documents.{table}").fetchone()[0] == 0
        # The same statement the service runs, without the tenant set.
        plan = query.build_plan(query.validate("예산", [], 20, None), ["예산"])
        values = {**plan.params, "text_chars": 100, "fetch": 21, "offset": 0, "facet_limit": 50,
                  "facet_candidates": 200}
        rows = conn.execute(plan.sql, values).fetchall()
        assert len(rows) == 1 and rows[0][0] == 0 and rows[0][2] is None
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM documents.outbox")
    # The admin (superuser) sees the rows: they exist, RLS hides them.
    with psycopg.connect(settings.dsn(user="postgres"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM documents.documents").fetchone()[0] > N_PETITIONS
        assert conn.execute("SELECT count(*) FROM documents.document_terms").fetchone()[0] > 0


async def test_deleted_documents_leave_the_index(client, seed, make_token, admin_dsn) -> None:  # type: ignore[no-untyped-def]
    h = _auth(make_token, seed.tenant_a)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        before = conn.execute("SELECT documents, title_terms, text_terms FROM documents.search_stats "
                              "WHERE tenant_id = %s", (seed.tenant_a,)).fetchone()
        doc_id = _insert(conn, seed.tenant_a, "폐기 예정 문서", "곧 삭제될 고유어휘 흑요석 문서다.", {"행정": 0.9})
    assert _ids(await _search(client, h, q="흑요석")) == [doc_id]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM documents.documents WHERE id = %s", (doc_id,))
        assert conn.execute("SELECT count(*) FROM documents.document_terms WHERE document_id = %s",
                            (doc_id,)).fetchone()[0] == 0
        after = conn.execute("SELECT documents, title_terms, text_terms FROM documents.search_stats "
                             "WHERE tenant_id = %s", (seed.tenant_a,)).fetchone()
    assert after == before  # N and the lengths BM25 uses are exact again
    assert (await _search(client, h, q="흑요석"))["total"] == 0


async def test_a_documents_tags_leave_and_return_with_it(seed, db: Database, admin_dsn) -> None:  # type: ignore[no-untyped-def]
    """The search role never reads the tags of a document in the bin (migration 0023: a flag kept by
    triggers on delete, restore and on tags written for a deleted document)."""
    async def visible_tags(doc_id: str) -> set[str]:
        async with db.tenant_transaction(seed.tenant_a) as conn:
            rows = await (await conn.execute("SELECT tag FROM documents.document_tags WHERE document_id = %s",
                                             (doc_id,))).fetchall()
        return {r["tag"] for r in rows}

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        doc_id = _insert(conn, seed.tenant_a, "휴지통 왕복 문서", "삭제와 복원을 오가는 고유어휘 녹주석 문서다.",
                         {"휴지통시험": 0.9})
    assert await visible_tags(doc_id) == {"휴지통시험"}
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE documents.documents SET deleted_at = now() WHERE id = %s", (doc_id,))
        # A tag written while the document is in the bin (a late tagging result) starts hidden.
        conn.execute("INSERT INTO documents.document_tags (tenant_id, document_id, tag, score, model_version) "
                     "VALUES (%s, %s, '늦은태그', 0.5, 'test-1')", (seed.tenant_a, doc_id))
    assert await visible_tags(doc_id) == set()
    params = query.validate(None, ["휴지통시험"], 20, None)
    assert (await engine.search(db, seed.tenant_a, params)).total == 0
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE documents.documents SET deleted_at = NULL WHERE id = %s", (doc_id,))
    assert await visible_tags(doc_id) == {"휴지통시험", "늦은태그"}
    assert [h.id for h in (await engine.search(db, seed.tenant_a, params)).hits] == [doc_id]


def _plan_nodes(plan: dict) -> list[dict]:  # type: ignore[type-arg]
    return [plan, *(n for child in plan.get("Plans", []) for n in _plan_nodes(child))]


async def test_a_tags_documents_are_read_from_the_index_alone(seed, db: Database, admin_dsn) -> None:  # type: ignore[no-untyped-def]
    """A tag filter starts from the documents carrying the tag; since migration 0024 the (tenant_id,
    tag) index carries what that read and the search role's policy need (document_id,
    document_deleted), so the search role's read does not go back to the table for each tag row."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) documents.document_tags")  # marks the pages all-visible
    async with db.tenant_transaction(seed.tenant_a) as conn:
        # The seed's table is tiny: only the plain index paths are left open to the planner.
        await conn.execute("SET LOCAL enable_seqscan = off")
        await conn.execute("SET LOCAL enable_bitmapscan = off")
        row = await (await conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) SELECT t.document_id FROM documents.document_tags t "
            "WHERE t.tenant_id = public.app_tenant_id() AND t.tag = ANY(%s)", (["경제"],))).fetchone()
    plan = next(iter(row.values()))[0]
    scans = [n for n in _plan_nodes(plan["Plan"]) if n.get("Relation Name") == "document_tags"]
    assert [(n["Node Type"], n["Index Name"]) for n in scans] == [("Index Only Scan", "document_tags_tenant_tag")]
    assert scans[0]["Actual Rows"] >= 1 and scans[0]["Heap Fetches"] == 0


async def test_search_role_cannot_write(seed, db: Database) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        async with db.tenant_transaction(seed.tenant_a) as conn:
            await conn.execute("UPDATE documents.documents SET title = 'x'")


async def test_engine_directly(seed, db: Database) -> None:  # type: ignore[no-untyped-def]
    result = await engine.search(db, seed.tenant_a, query.validate("복지", [], 20, None))
    assert seed.docs["budget"] in [h.id for h in result.hits]
    with pytest.raises(ValueError):
        await engine.search(db, "not-a-uuid", query.validate("복지", [], 20, None))


# ------------------------------------------------------------------ HTTP errors

async def test_requires_token(client) -> None:  # type: ignore[no-untyped-def]
    r = await client.get("/api/v1/search", params={"q": "예산"})
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"][0]["field"] == "Authorization"
    r = await client.get("/api/v1/search", params={"q": "예산"}, headers={"Authorization": "Bearer nonsense"})
    assert r.status_code == 401 and r.json()["type"] == "urn:doctag:problem:invalid-token"


async def test_expired_token(client, seed, make_token) -> None:  # type: ignore[no-untyped-def]
    r = await client.get("/api/v1/search", params={"q": "예산"},
                         headers={"Authorization": f"Bearer {make_token(seed.tenant_a, ttl=-60)}"})
    assert r.status_code == 401


@pytest.mark.parametrize("params,field", [
    ({}, "q"),
    ({"q": "   "}, "q"),
    ({"q": "가" * 501}, "q"),
    ({"q": "예산", "limit": 0}, "limit"),
    ({"q": "예산", "limit": 101}, "limit"),
    ({"q": "예산", "limit": "many"}, "limit"),
    ({"q": "예산", "cursor": "garbage!"}, "cursor"),
    ({"q": "예산", "tag": ""}, "tag"),
])
async def test_validation_errors_name_the_field(client, seed, make_token, params, field) -> None:  # type: ignore[no-untyped-def]
    r = await client.get("/api/v1/search", params=params, headers=_auth(make_token, seed.tenant_a))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert [e["field"] for e in body["errors"]] == [field]
    assert body["status"] == 422 and body["request_id"]


async def test_readiness_and_openapi(client) -> None:  # type: ignore[no-untyped-def]
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "analyser": "ok"}
    spec = (await client.get("/openapi.json")).json()
    assert "/api/v1/search" in spec["paths"]


async def test_not_ready_until_the_korean_analyser_has_loaded(settings: SearchSettings, db: Database) -> None:
    """The first query must not pay for loading Kiwi: /readyz fails until the warm-up has run."""
    analyser = Analyser()
    app = build_app(settings, db, manage_db=False, analyser=analyser)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s") as c:
        before = await c.get("/readyz")
        assert before.status_code == 503, before.text
        assert before.json()["checks"] == {
            "database": "ok", "analyser": "unavailable: RuntimeError: the Korean analyser is still loading"}
        async with app.router.lifespan_context(app):  # starts the warm-up
            await analyser.wait()
            after = await c.get("/readyz")
            assert after.status_code == 200 and after.json()["checks"]["analyser"] == "ok"
            assert analyser.loaded


async def test_readiness_fails_without_database(settings: SearchSettings) -> None:
    broken = settings.model_copy(update={"db_port": 1})
    app = build_app(broken, Database(broken.dsn(), max_size=1))
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s") as c):
        r = await c.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["database"].startswith("unavailable")


# ------------------------------------------------------------------ gRPC over a real socket

@dataclass
class GrpcSearch:
    stub: search_pb2_grpc.SearchStub
    channel: grpc.aio.Channel
    token: dict[str, str]  # tenant id -> end-user token

    def meta(self, tenant: str, request_id: str = "grpc-test") -> tuple[tuple[str, str], ...]:
        return (("x-request-id", request_id), ("authorization", f"Bearer {self.token[tenant]}"))


@pytest.fixture
async def grpc_search(seed, db: Database, key_dir: Path, make_token) -> AsyncIterator[GrpcSearch]:  # type: ignore[no-untyped-def]
    """The Search servicer behind mutual TLS and caller authorisation; the client is the gateway."""
    server = create_server("search-test", grpc_security("search", jwt_public_key=key_dir / "jwt_public.pem"))
    add_to_server(server, db)
    health = add_health(server, [SERVICE_NAME])
    port = bind(server, "127.0.0.1:0", grpc_security("search"))
    await server.start()
    await set_serving(health, [SERVICE_NAME], True)
    channel = aio_channel(f"127.0.0.1:{port}", "gateway", "search")
    try:
        yield GrpcSearch(search_pb2_grpc.SearchStub(channel), channel,
                         {t: make_token(t) for t in (seed.tenant_a, seed.tenant_b)})
    finally:
        await channel.close()
        await server.stop(1)


async def test_grpc_search(grpc_search: GrpcSearch, seed) -> None:  # type: ignore[no-untyped-def]
    stub, channel, a = grpc_search.stub, grpc_search.channel, seed.tenant_a
    resp = await stub.Search(search_pb2.SearchRequest(query="예산", limit=2), timeout=10, metadata=grpc_search.meta(a))
    assert resp.total >= 3 and len(resp.hits) == 2 and resp.next_cursor
    page2 = await stub.Search(search_pb2.SearchRequest(tenant_id=a, query="예산", limit=2, cursor=resp.next_cursor),
                              timeout=10, metadata=grpc_search.meta(a))
    assert not {h.id for h in resp.hits} & {h.id for h in page2.hits}
    tagged = await stub.Search(search_pb2.SearchRequest(query="예산", tags=["경제"]), timeout=10,
                               metadata=grpc_search.meta(a))
    assert [h.id for h in tagged.hits] == [seed.docs["budget"]]
    assert list(tagged.hits[0].tags) == ["경제", "정치"] and "예산을" in tagged.hits[0].snippet
    assert tagged.next_cursor == "" and list(tagged.relaxed_phrases) == []
    relaxed = await stub.Search(search_pb2.SearchRequest(query='"안전 교통"'), timeout=10,
                                metadata=grpc_search.meta(a))
    assert list(relaxed.relaxed_phrases) == ["안전 교통"] and relaxed.hits[0].id == seed.docs["traffic"]
    # The tenant is the token's: tenant B's user sees B's document only.
    other = await stub.Search(search_pb2.SearchRequest(query="예산"), timeout=10,
                              metadata=grpc_search.meta(seed.tenant_b))
    assert [h.id for h in other.hits] == [seed.b_budget_id]
    health = health_pb2_grpc.HealthStub(channel)
    status = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING


async def test_grpc_search_refuses_another_tenant_or_no_token(grpc_search: GrpcSearch, seed) -> None:  # type: ignore[no-untyped-def]
    """A request naming tenant B with A's token, or without a token, is refused (PERMISSION_DENIED)."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_search.stub.Search(search_pb2.SearchRequest(tenant_id=seed.tenant_b, query="예산"), timeout=10,
                                      metadata=grpc_search.meta(seed.tenant_a))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "tenant_id" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_search.stub.Search(search_pb2.SearchRequest(tenant_id=seed.tenant_a, query="예산"), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "token" in err.value.details()


@pytest.mark.parametrize("request_kwargs,detail", [
    ({"query": ""}, "query"),
    ({"query": "예산", "limit": 500}, "limit"),
    ({"query": "예산", "cursor": "###"}, "cursor"),
])
async def test_grpc_invalid_arguments(grpc_search: GrpcSearch, seed, request_kwargs, detail) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_search.stub.Search(search_pb2.SearchRequest(**request_kwargs), timeout=10,
                                      metadata=grpc_search.meta(seed.tenant_a))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(detail)
