"""Browsing without a text query, against the real PostgreSQL: the page, total and facets of a search by
filters alone must be those of ranking every document that passes the filters.

Since migration 0025 such a search reads only the rows its page and facets need, in the order of an index
(a tag's rows best first, or the documents newest first), and counts the total apart. The answer is
compared here with one worked out in Python from every row, read as the admin: each live document that
carries every requested tag and passes the other filters, scored by the average over the tags of the best
score each carries (the model's or a person's), ordered by score, upload time and id, or by time and id.
The corpus has what makes those reads go wrong: equal scores, equal upload times, a tag carried twice (by
the model and by a person, either one the better), documents in the bin, and filters besides the tags.
"""
from __future__ import annotations

import hashlib
import random
import struct
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from services.search import engine, query
from services.search.settings import SearchSettings
from tests.conftest import create_tenant

pytestmark = pytest.mark.integration

N_DOCS = 80
TAGS = ("민원", "예산", "교통")
START = datetime(2026, 1, 1, tzinfo=UTC)
# Lowered so that the facets are a sample of the best candidates, as they are for a common tag.
FACET_CANDIDATES = 15


@dataclass(frozen=True)
class Doc:
    id: str
    created_at: datetime
    filename: str
    pii: bool
    deleted: bool
    tags: dict[str, list[tuple[str, float]]]   # tag -> [(source, score)]


@pytest.fixture(scope="module")
def corpus(admin_dsn: str) -> tuple[str, list[Doc]]:
    tenant = create_tenant(admin_dsn, f"browse-{uuid.uuid4().hex[:8]}")
    rng = random.Random(25)
    docs: list[Doc] = []
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for i in range(N_DOCS):
            doc_id = str(uuid.uuid4())
            # Upload times in steps of a day, often equal; scores from five values, often equal.
            created = START + timedelta(days=rng.randrange(12))
            filename = f"문서{i}.{rng.choice(['pdf', 'hwp', 'txt'])}"
            pii = rng.random() < 0.3
            tags: dict[str, list[tuple[str, float]]] = {}
            for tag in TAGS:
                if rng.random() < (0.8 if tag == "민원" else 0.4):
                    tags[tag] = [("model", rng.choice([0.5, 0.625, 0.75, 0.875, 1.0]))]
                    if rng.random() < 0.2:   # a person confirmed it (score 1) or, rarely, weaker than the model
                        tags[tag].append(("user", rng.choice([1.0, 1.0, 0.25])))
            if rng.random() < 0.05:
                tags["민원"] = [("user", 1.0)]   # added by a person only
            body = f"본문 {i}".encode()
            conn.execute(
                "INSERT INTO documents.documents (id, tenant_id, title, filename, content_type, size_bytes, sha256,"
                " status, text_content, pii, created_at) VALUES (%s, %s, %s, %s, 'text/plain', %s, %s, 'tagged', %s,"
                " %s, %s)",
                (doc_id, tenant, f"문서 {i}", filename, len(body), hashlib.sha256(body).hexdigest(), body.decode(),
                 '{"mobile": 1}' if pii else "{}", created))
            for tag, rows in tags.items():
                for source, score in rows:
                    conn.execute("INSERT INTO documents.document_tags (tenant_id, document_id, tag, score, source) "
                                 "VALUES (%s, %s, %s, %s, %s)", (tenant, doc_id, tag, score, source))
            deleted = rng.random() < 0.1
            if deleted:
                conn.execute("UPDATE documents.documents SET deleted_at = now() WHERE id = %s", (doc_id,))
            docs.append(Doc(doc_id, created, filename, pii, deleted, tags))
        conn.execute("ANALYZE documents.document_tags")
    return tenant, docs



def _f4(value: float) -> float:
    """A score as PostgreSQL's `real` holds it, read as double precision."""
    return float(struct.unpack("f", struct.pack("f", value))[0])


def _expected(docs: list[Doc], params: query.SearchParams) -> dict[str, Any]:
    """The page, total and facets of ranking every live document that passes the filters."""
    matches = []
    for d in docs:
        if d.deleted or any(t not in d.tags for t in params.tags):
            continue
        if params.pii is not None and d.pii != params.pii:
            continue
        if params.uploaded_from is not None and d.created_at < params.uploaded_from:
            continue
        if params.uploaded_to is not None and d.created_at >= params.uploaded_to:
            continue
        if params.types and d.filename.rsplit(".", 1)[1] not in params.types:
            continue
        best = [max(_f4(score) for _, score in d.tags[t]) for t in params.tags]
        matches.append((sum(best) / len(best) if best else 0.0, d))
    if params.sort == "date":
        matches.sort(key=lambda m: (m[1].created_at, uuid.UUID(m[1].id)), reverse=True)
    else:
        matches.sort(key=lambda m: (m[0], m[1].created_at, uuid.UUID(m[1].id)), reverse=True)
    facets: Counter[str] = Counter(t for _, d in matches[:FACET_CANDIDATES] for t in d.tags)
    page = matches[params.offset: params.offset + params.limit + 1]
    return {"ids": [uuid.UUID(d.id) for _, d in page], "scores": [s for s, _ in page], "total": len(matches),
            "facets": dict(facets)}


CASES = [
    {"tags": ["민원"]},
    {"tags": ["민원"], "offset": 21},
    {"tags": ["민원"], "offset": 60},
    {"tags": ["교통"], "limit": 3},
    {"tags": ["민원"], "pii": True},
    {"tags": ["민원"], "uploaded_from": "2026-01-04", "uploaded_to": "2026-01-08"},
    {"tags": ["민원"], "types": ["pdf", "hwp"]},
    {"tags": ["민원"], "sort": "date", "offset": 7},
    {"tags": ["민원", "예산"]},
    {"tags": ["민원", "예산"], "offset": 9, "limit": 4},
    {"tags": ["민원", "예산", "교통"], "pii": False},
    {"tags": ["예산", "교통"], "sort": "date"},
    {"tags": ["없는태그"]},
    {"pii": True},
    {"pii": False, "offset": 11},
    {"types": ["txt"], "sort": "date"},
    {"uploaded_from": "2026-01-06"},
]


@pytest.mark.parametrize("driver_cap", [query.TAG_DRIVER_CAP, 1], ids=["from the narrowest tag", "grouped"])
@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
async def test_browsing_answers_as_ranking_every_document(corpus, db, case, driver_cap, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Several tags are read from the narrowest one, or (every tag on `TAG_DRIVER_CAP` documents or more)
    by grouping the tags' entries: both ways are checked."""
    monkeypatch.setattr(query, "FACET_CANDIDATES", FACET_CANDIDATES)
    monkeypatch.setattr(query, "TAG_DRIVER_CAP", driver_cap)
    tenant, docs = corpus
    args = dict(case)
    offset, limit = args.pop("offset", 0), args.pop("limit", 5)
    params = query.validate(None, args.pop("tags", []), limit, None, args.pop("pii", None),
                            uploaded_from=args.pop("uploaded_from", None), uploaded_to=args.pop("uploaded_to", None),
                            types=args.pop("types", None), sort=args.pop("sort", None))
    params = query.SearchParams(**{**params.__dict__, "offset": offset})
    plan = query.build_plan(params)
    async with db.tenant_transaction(tenant) as conn:
        rows = await (await conn.execute(plan.sql, engine.statement_values(plan, params))).fetchall()
    found = [r for r in rows if r["id"] is not None]
    expected = _expected(docs, params)
    assert [r["id"] for r in found] == expected["ids"]
    assert [r["score"] for r in found] == pytest.approx(expected["scores"], abs=1e-12)
    assert rows[0]["total"] == expected["total"]
    assert {f["tag"]: f["count"] for f in rows[0]["facets"]} == expected["facets"]


def test_the_corpus_has_what_makes_browsing_hard(corpus) -> None:  # type: ignore[no-untyped-def]
    """The comparison above is only as good as its corpus: ties, tags carried twice, documents in the bin."""
    _, docs = corpus
    live = [d for d in docs if not d.deleted]
    twice = [d for d in live if len(d.tags.get("민원", [])) == 2]
    assert any(max(s for _, s in d.tags["민원"]) == 1.0 and d.tags["민원"][0][1] == 1.0 for d in twice)
    assert any(d.tags["민원"][0][1] > max(s for src, s in d.tags["민원"] if src == "user") for d in twice)
    scores = Counter(max(s for _, s in d.tags["민원"]) for d in live if "민원" in d.tags)
    assert max(scores.values()) >= 5
    times = Counter(d.created_at for d in live)
    assert max(times.values()) >= 3
    assert any(d.deleted and "민원" in d.tags for d in docs)
    assert any(d.tags.get("민원") == [("user", 1.0)] for d in live)


async def test_search_sessions_plan_each_statement_for_its_values(db, test_db_name) -> None:  # type: ignore[no-untyped-def]
    """A generic plan kept for every value browsed a tag on 107 documents by walking 500,000; and PostgreSQL
    would compile a browse's statement for 0.7 s (its estimated cost counts a subquery for every tag entry).
    The search service's sessions plan every statement for its values, and without JIT unless DOCTAG_DB_JIT
    asks for it."""
    async with db.transaction() as conn:
        assert (await (await conn.execute("SHOW plan_cache_mode")).fetchone())["plan_cache_mode"] == "force_custom_plan"
        assert (await (await conn.execute("SHOW jit")).fetchone())["jit"] == "off"
    with_jit = SearchSettings(db_name=test_db_name, db_jit=True).dsn()
    assert "jit" not in with_jit and "plan_cache_mode=force_custom_plan" in with_jit
