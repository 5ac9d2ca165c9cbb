"""`doctag search eval` and `doctag search reindex` against the real PostgreSQL."""
from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import psycopg
import pytest

from services.cli import search_cmds
from services.cli.main import main
from tests.conftest import create_tenant

pytestmark = pytest.mark.integration

CORPUS = [
    {"id": "d1", "title": "2027년 예산안 발표", "text": "정부는 내년도 예산을 크게 늘렸다."},
    {"id": "d2", "title": "어린이 교통 안전 대책", "text": "어린이 보호구역 교통사고를 줄인다."},
    {"id": "d3", "title": "운전면허 갱신 안내", "text": "적성검사 기간을 확인하세요."},
    {"id": "d4", "title": "연말정산 서류", "text": "W-2 양식을 제출한다."},
    {"id": "d5", "title": "복지 지출 증가", "text": "복지 분야 지출이 늘었다."},
]
QUERIES = [
    {"id": "q1", "text": "예산은 얼마인가요"},
    {"id": "q2", "text": "운전 면허"},
    {"id": "q3", "text": "W2"},
    {"id": "q4", "text": "무엇인가요"},   # stop words only: no hit
]
QRELS = "q1\td1\t2\nq2\td3\t2\nq3\td4\t2\nq4\td5\t1\n"


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, test_db_name: str):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DOCTAG_DB_NAME", test_db_name)

    def run(*argv: str) -> int:
        monkeypatch.setattr("sys.stdin", io.StringIO(""))
        return main(list(argv))

    return run


def _write(tmp_path: Path) -> tuple[Path, Path, Path]:
    corpus, queries, qrels = tmp_path / "c.jsonl", tmp_path / "q.jsonl", tmp_path / "r.tsv"
    corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in CORPUS), encoding="utf-8")
    queries.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in QUERIES), encoding="utf-8")
    qrels.write_text(QRELS, encoding="utf-8")
    return corpus, queries, qrels


def test_eval_reports_metrics_and_cleans_up(cli, tmp_path, capsys, admin_dsn) -> None:  # type: ignore[no-untyped-def]
    corpus, queries, qrels = _write(tmp_path)
    assert cli("search", "eval", "--corpus", str(corpus), "--queries", str(queries), "--qrels", str(qrels),
               "--lexical-only") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["queries"] == 4 and result["documents"] == 5 and result["retrieval"] == "lexical"
    # Three queries find their document first; the stop-word query finds nothing.
    assert result["mrr@10"] == 0.75 and result["recall@10"] == 0.75 and result["ndcg@10"] == 0.75
    assert result["zero_hit_share"] == 0.25
    with psycopg.connect(admin_dsn) as conn:
        left = conn.execute("SELECT count(*) FROM identity.tenants WHERE slug LIKE 'search-eval-%'").fetchone()
    assert left is not None and left[0] == 0


def test_eval_input_errors(cli, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    corpus, queries, qrels = _write(tmp_path)
    qrels.write_text("q1 d1 2\n", encoding="utf-8")
    assert cli("search", "eval", "--corpus", str(corpus), "--queries", str(queries), "--qrels", str(qrels)) == 1
    assert "query_id<TAB>doc_id<TAB>relevance" in capsys.readouterr().err


def test_metrics() -> None:
    rels = {"a": 2, "b": 1}
    assert search_cmds.ndcg_at_k(["a", "b"], rels) == 1.0
    assert 0 < search_cmds.ndcg_at_k(["x", "b", "a"], rels) < 1
    assert search_cmds.recall_at_k(["x", "a"], rels) == 0.5
    assert search_cmds.mrr_at_k(["x", "y", "b"], rels) == pytest.approx(1 / 3)
    assert search_cmds.mrr_at_k([], rels) == 0.0


def _unindexed_tenant(admin_dsn: str, title: str, text: str) -> tuple[str, str, str]:
    """(slug, tenant id, document id) of a new tenant holding one document as a document stored
    before migration 0004 looks: no postings, lengths 0, indexed_at NULL."""
    slug = f"reidx-{uuid.uuid4().hex[:6]}"
    tenant = create_tenant(admin_dsn, slug)
    doc_id = str(uuid.uuid4())
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO documents.documents (id, tenant_id, title, filename, content_type, size_bytes, sha256,"
            " status, text_content) VALUES (%s, %s, %s, 'a.txt', 'text/plain', 1, %s, 'tagged', %s)",
            (doc_id, tenant, title, uuid.uuid4().hex * 2, text))
    return slug, tenant, doc_id


def test_reindex_indexes_documents_written_before_the_index(cli, capsys, admin_dsn) -> None:  # type: ignore[no-untyped-def]
    slug, tenant, doc_id = _unindexed_tenant(admin_dsn, "청사 이전", "세종 청사로 옮긴다.")
    assert cli("search", "reindex", "--tenant", slug) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["tenants"], out["documents"], out["embeddings"]) == (1, 1, 0)
    with psycopg.connect(admin_dsn) as conn:
        terms = {r[0] for r in conn.execute(
            "SELECT term FROM documents.document_terms WHERE document_id = %s", (doc_id,)).fetchall()}
        stats = conn.execute("SELECT documents, title_terms > 0, text_terms > 0 FROM documents.search_stats "
                             "WHERE tenant_id = %s", (tenant,)).fetchone()
    assert {"청사", "이전", "세종", "옮기다"} <= terms
    assert stats == (1, True, True)
    assert cli("search", "reindex", "--tenant", "no-such-tenant") == 1


def test_reindex_missing_only_leaves_indexed_documents_alone(cli, capsys, admin_dsn) -> None:  # type: ignore[no-untyped-def]
    """What `doctag stack up` runs after an upgrade: only documents never indexed are analysed."""
    slug, _, _ = _unindexed_tenant(admin_dsn, "예산 편성", "내년 예산을 편성한다.")
    assert cli("search", "reindex", "--tenant", slug, "--missing-only") == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["tenants"], out["documents"]) == (1, 1) and "embeddings_skipped" not in out
    assert cli("search", "reindex", "--tenant", slug, "--missing-only") == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["tenants"], out["documents"]) == (1, 0), "indexed documents are skipped"
