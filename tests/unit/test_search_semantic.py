"""Hybrid search as pure logic: stored vectors, exact similarity, filters, fusion SQL, baselines."""
from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from services.cli.search_baselines import bm25_kiwi, hangul_bigrams, tantivy_bigrams
from services.cli.search_cmds import CorpusDoc
from services.common import embeddings
from services.search import query
from services.search.semantic import TenantVectors, top_similar


def _unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_embedding_packing_round_trips_and_bad_vectors_are_refused() -> None:
    v = _unit(1, 2, 3, 4)
    packed = embeddings.pack(v)
    assert len(packed) == 16
    assert np.array_equal(embeddings.unpack(packed), v)
    stored = embeddings.checked("e5", "passage/2x256/mean", packed)
    assert stored.dim == 4
    with pytest.raises(embeddings.InvalidEmbedding, match="normalised"):
        embeddings.checked("e5", "v", embeddings.pack(np.array([1.0, 1.0], dtype=np.float32)))
    with pytest.raises(embeddings.InvalidEmbedding, match="finite"):
        embeddings.checked("e5", "v", embeddings.pack(np.array([np.nan, 0.0], dtype=np.float32)))
    with pytest.raises(embeddings.InvalidEmbedding, match="float32"):
        embeddings.checked("e5", "v", b"\x00\x00\x80")
    with pytest.raises(embeddings.InvalidEmbedding, match="model and version"):
        embeddings.checked("", "v", packed)


def test_top_similar_is_exact_best_first_and_can_leave_one_out() -> None:
    vectors = TenantVectors(model="m", dim=3)
    vectors.buffer = np.zeros((1, 3), dtype=np.float32)   # grows as documents come
    for doc_id, v in {"a": _unit(1, 0, 0), "b": _unit(1, 1, 0), "c": _unit(0, 1, 0), "d": _unit(0, 0, 1)}.items():
        vectors.put(doc_id, v)
    assert len(vectors.ids) == 4 and vectors.matrix.shape == (4, 3)
    ids, sims = top_similar(vectors, _unit(1, 0.2, 0), 3)
    assert ids == ["a", "b", "c"]
    assert sims[0] == pytest.approx(float(_unit(1, 0, 0) @ _unit(1, 0.2, 0)), abs=1e-6)
    assert sims == sorted(sims, reverse=True)
    ids, _ = top_similar(vectors, _unit(1, 0, 0), 10, exclude="a")
    assert "a" not in ids and len(ids) == 3
    vectors.put("a", _unit(0, 0, 1))   # a re-embedded document replaces its row
    assert len(vectors.ids) == 4
    assert set(top_similar(vectors, _unit(0, 0, 1), 2)[0]) == {"a", "d"}
    assert top_similar(TenantVectors(model="m", dim=3), _unit(1, 0, 0), 5) == ([], [])


def test_filters_validate_and_name_the_wrong_field() -> None:
    p = query.validate("예산", [], 20, None, uploaded_from="2026-01-01", uploaded_to="2026-01-31",
                       types=["PDF", ".htm", "pdf"], sort="date")
    assert p.uploaded_from == datetime(2026, 1, 1, tzinfo=UTC)
    assert p.uploaded_to == datetime(2026, 2, 1, tzinfo=UTC), "a bare `to` date includes that whole day"
    assert p.types == ("pdf", "html") and p.sort == "date"
    assert query.validate("예산", [], 20, None, uploaded_from="2026-01-01T09:00:00+09:00").uploaded_from == \
        datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    for kwargs, field in (({"uploaded_from": "yesterday"}, "from"), ({"uploaded_to": "2026-13-01"}, "to"),
                          ({"uploaded_from": "2026-02-01", "uploaded_to": "2026-01-01"}, "to"),
                          ({"types": ["exe"]}, "type"), ({"sort": "popularity"}, "sort")):
        with pytest.raises(query.QueryError) as info:
            query.validate("예산", [], 20, None, **kwargs)  # type: ignore[arg-type]
        assert info.value.field == field
    # Filters alone are a valid search (newest first).
    assert query.validate(None, [], 20, None, types=["hwp"]).q is None


def test_a_cursor_is_bound_to_the_filters_and_sort() -> None:
    first = query.validate("예산", [], 20, None, types=["pdf"], sort="date")
    cursor = query.encode_cursor(20, "예산", [], None, first.cursor_filters())
    assert query.validate("예산", [], 20, cursor, types=["pdf"], sort="date").offset == 20
    for other in ({"types": ["hwp"], "sort": "date"}, {"types": ["pdf"]}, {"sort": "date"}):
        with pytest.raises(query.QueryError, match="different query"):
            query.validate("예산", [], 20, cursor, **other)  # type: ignore[arg-type]


def test_hybrid_plan_binds_every_value_and_keeps_the_filters() -> None:
    hostile = "예산' OR 1=1 --"
    params = query.validate(hostile, [], 20, None, uploaded_from="2026-01-01", types=["pdf"], sort="date")
    semantic = query.Semantic(("00000000-0000-0000-0000-000000000001",), (0.9,), query.Fusion(w_sem=2.0))
    plan = query.build_plan(params, ["예산"], [], [], semantic)
    assert hostile not in plan.sql and "1=1" not in plan.sql
    assert plan.params["sem_ids"] == ["00000000-0000-0000-0000-000000000001"]
    assert plan.params["w_sem"] == 2.0 and plan.params["extensions"] == ["pdf"]
    assert "ORDER BY created_at DESC, id DESC" in plan.sql, "sort=date orders the page by upload time"
    assert plan.sql.count("d.created_at >= %(uploaded_from)s") == 2, "lexical and semantic candidates both filtered"
    lexical = query.build_plan(query.validate("예산", [], 20, None), ["예산"])
    assert "sem_ids" not in lexical.sql and "ORDER BY score DESC" in lexical.sql


def test_hangul_bigrams_and_the_baselines_rank_the_matching_document_first() -> None:
    assert hangul_bigrams("운전면허 갱신 W-2 가") == ["운전", "전면", "면허", "갱신", "w", "2", "가"]
    corpus = [CorpusDoc("d1", "운전면허 갱신 안내", "적성검사 기간을 확인하세요."),
              CorpusDoc("d2", "예산안 발표", "정부는 내년도 예산을 크게 늘렸다."),
              CorpusDoc("d3", "교통 안전", "어린이 보호구역 교통사고를 줄인다.")]
    queries = [("q1", "예산은 얼마인가요"), ("q2", "운전 면허"), ("q3", "무엇")]
    bm25 = bm25_kiwi(corpus, queries)
    assert bm25["q1"][0] == "d2" and bm25["q2"][0] == "d1" and bm25["q3"] == []
    tantivy = tantivy_bigrams(corpus, queries)
    assert tantivy["q1"][0] == "d2" and tantivy["q2"][0] == "d1"
