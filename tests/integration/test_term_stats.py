"""Search's term statistics against the real PostgreSQL: upload's job counts a department's common
terms (as doctag_upload), and the search statement takes their figures from what it stored (as
doctag_search) instead of counting them, scaled to the department's size, within its own tenant only."""
from __future__ import annotations

import hashlib
import uuid

import psycopg
import pytest

from services.common.db import Database
from services.search import engine, morph, query
from services.search.settings import SearchSettings
from services.upload.settings import UploadSettings
from services.upload.term_stats import TermStatsJob
from tests.conftest import create_tenant
from tests.search_index import index_document

pytestmark = pytest.mark.integration

TEXTS = [
    "올해 예산을 크게 늘렸다. 복지 예산이 늘었다.",
    "예산 집행 실적을 보고한다.",
    "교통 예산과 안전 대책을 발표했다.",
    "어린이 교통 안전 대책이다.",
    "예산 심의 일정 안내",
    "복지 정책 안내",
]


def _insert(admin_dsn: str, tenant: str, text: str) -> str:
    doc_id = str(uuid.uuid4())
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO documents.documents (id, tenant_id, title, filename, content_type, size_bytes, sha256, "
            "status, text_content) VALUES (%s, %s, '문서', 'a.txt', 'text/plain', %s, %s, 'tagged', %s)",
            (doc_id, tenant, len(text.encode()), hashlib.sha256(f"{doc_id}{text}".encode()).hexdigest(), text))
        index_document(conn, tenant, doc_id, "문서", text)
    return doc_id


def _live_counts(admin_dsn: str, tenant: str) -> dict[str, tuple[int, int]]:
    with psycopg.connect(admin_dsn) as conn:
        rows = conn.execute("SELECT term, count(DISTINCT document_id), count(*) FROM documents.document_terms "
                            "WHERE tenant_id = %s GROUP BY term", (tenant,)).fetchall()
    return {str(r[0]): (int(r[1]), int(r[2])) for r in rows}


def _stored(admin_dsn: str, tenant: str) -> dict[str, tuple[int, int, int]]:
    with psycopg.connect(admin_dsn) as conn:
        rows = conn.execute("SELECT term, df, postings, n_at FROM documents.term_stats WHERE tenant_id = %s",
                            (tenant,)).fetchall()
    return {str(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in rows}


async def _figures(search_db: Database, tenant: str, q: str) -> dict[str, dict]:
    """The term figures the search statement used for `q` (with nothing known in the replica)."""
    analyzed = morph.analyze_query(q)
    params = query.validate(q, None, 5, None)
    plan = query.build_plan(params, analyzed.terms)
    async with search_db.tenant_transaction(tenant) as conn:
        rows = await (await conn.execute(plan.sql, engine.statement_values(plan, params))).fetchall()
    return {f["term"]: f for f in rows[0]["term_figures"]}


@pytest.fixture
async def dbs(upload_settings: UploadSettings, test_db_name: str):  # type: ignore[no-untyped-def]
    upload_db = Database(upload_settings.dsn(), max_size=2)
    search_db = Database(SearchSettings(db_name=test_db_name).dsn(), max_size=2)
    await upload_db.open()
    await search_db.open()
    yield upload_db, search_db
    await upload_db.close()
    await search_db.close()


def _job(upload_db: Database, **overrides: float) -> TermStatsJob:
    settings: dict = {"interval_seconds": 3600, "min_documents": 1, "min_postings": 3, "slack": 0.05, **overrides}
    return TermStatsJob(upload_db, **settings)


async def test_common_terms_are_counted_ahead_and_search_uses_them(dbs, admin_dsn: str) -> None:  # type: ignore[no-untyped-def]
    upload_db, search_db = dbs
    tenant = create_tenant(admin_dsn, f"ts-{uuid.uuid4().hex[:8]}")
    other = create_tenant(admin_dsn, f"ts-{uuid.uuid4().hex[:8]}")
    for text in TEXTS:
        _insert(admin_dsn, tenant, text)
        _insert(admin_dsn, other, text)
    job = _job(upload_db)
    assert await job.count_tenant(tenant) == 1

    live = _live_counts(admin_dsn, tenant)
    stored = _stored(admin_dsn, tenant)
    assert stored, "some term has at least 3 postings"
    assert stored == {t: (df, postings, len(TEXTS)) for t, (df, postings) in live.items() if postings >= 3}
    assert "예산" in stored and "복지" not in stored   # 복지 has 2 postings: left to live counting
    assert _stored(admin_dsn, other) == {}, "counted for one department only"

    # Search takes the stored figure (not counted again) and counts the rest; each is the exact count.
    figures = await _figures(search_db, tenant, "예산 복지")
    assert figures["예산"]["counted"] is False and figures["예산"]["df"] == live["예산"][0]
    assert figures["복지"]["counted"] is True and figures["복지"]["df"] == live["복지"][0]
    # Another department never sees them: its terms are counted live.
    assert (await _figures(search_db, other, "예산"))["예산"]["counted"] is True

    # The department grows: a stored figure is scaled to its size, and counted live once too old.
    for _ in range(2):
        _insert(admin_dsn, tenant, "문화 행사 안내")        # 8 documents: 1.33 x the 6 counted
    figures = await _figures(search_db, tenant, "예산")
    assert figures["예산"]["counted"] is True, "grown by a third (> 20%): the stored figure is not used"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE documents.term_stats SET n_at = 7 WHERE tenant_id = %s", (tenant,))
    figures = await _figures(search_db, tenant, "예산")
    assert figures["예산"]["counted"] is False
    assert figures["예산"]["df"] == pytest.approx(stored["예산"][0] * 8 / 7)


async def test_the_job_counts_only_departments_that_are_due(dbs, admin_dsn: str) -> None:  # type: ignore[no-untyped-def]
    upload_db, _ = dbs
    tenant = create_tenant(admin_dsn, f"ts-{uuid.uuid4().hex[:8]}")
    for text in TEXTS:
        _insert(admin_dsn, tenant, text)

    async def due() -> set[str]:
        async with upload_db.transaction() as conn:
            rows = await (await conn.execute("SELECT tenant_id FROM documents.term_stats_due(1, 0.05)")).fetchall()
        return {str(r["tenant_id"]) for r in rows}

    assert tenant in await due()
    assert await _job(upload_db, min_documents=10**9).run_once() == 0, "no department is that large"
    await _job(upload_db).count_tenant(tenant)
    assert tenant not in await due(), "just counted"
    _insert(admin_dsn, tenant, "문화 행사 안내")             # 7 documents: 17% more than counted
    assert tenant in await due()

    # Another replica counting it already (the advisory lock held): this one leaves it.
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext('term-stats:' || %s))", (tenant,))
        assert await _job(upload_db).count_tenant(tenant) == 0
        conn.execute("SELECT pg_advisory_unlock(hashtext('term-stats:' || %s))", (tenant,))
    assert await _job(upload_db).count_tenant(tenant) == 1
    assert {n for _, _, n in _stored(admin_dsn, tenant).values()} == {7}


def test_search_may_read_but_not_write_the_figures(test_db_name: str, admin_dsn: str) -> None:
    tenant = create_tenant(admin_dsn, f"ts-{uuid.uuid4().hex[:8]}")
    dsn = SearchSettings(db_name=test_db_name).dsn()
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT set_config('app.tenant_id', %s, false)", (tenant,))
        assert conn.execute("SELECT count(*) FROM documents.term_stats").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO documents.term_stats VALUES (%s, 'x', 1, 1, 1)", (tenant,))
