"""Hybrid search as pure logic: stored vectors, exact and ANN similarity, filters, fusion SQL, baselines."""
from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.cli.search_baselines import bm25_kiwi, hangul_bigrams, tantivy_bigrams
from services.cli.search_cmds import CorpusDoc
from services.common import embeddings
from services.search import query
from services.search.ann import AnnIndex, AnnParams, Dtype
from services.search.ann_store import IndexStore
from services.search.vectors import INDEX_WORK, ExactVectors, IndexPolicy, TenantVectors, VectorCache, top_similar


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
    exact = ExactVectors(dim=3)
    exact.buffer = np.zeros((1, 3), dtype=np.float32)   # grows as documents come
    for doc_id, v in {"a": _unit(1, 0, 0), "b": _unit(1, 1, 0), "c": _unit(0, 1, 0), "d": _unit(0, 0, 1)}.items():
        exact.put(doc_id, v)
    vectors = TenantVectors(model="m", dim=3, exact=exact)
    assert len(vectors) == 4 and exact.matrix.shape == (4, 3)
    ids, sims = top_similar(vectors, _unit(1, 0.2, 0), 3)
    assert ids == ["a", "b", "c"]
    assert sims[0] == pytest.approx(float(_unit(1, 0, 0) @ _unit(1, 0.2, 0)), abs=1e-6)
    assert sims == sorted(sims, reverse=True)
    ids, _ = top_similar(vectors, _unit(1, 0, 0), 10, exclude="a")
    assert "a" not in ids and len(ids) == 3
    exact.put("a", _unit(0, 0, 1))   # a re-embedded document replaces its row
    assert len(vectors) == 4
    assert set(top_similar(vectors, _unit(0, 0, 1), 2)[0]) == {"a", "d"}
    assert top_similar(TenantVectors(model="m", dim=3), _unit(1, 0, 0), 5) == ([], [])


def _clustered(n: int, dim: int = 32, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Unit vectors around 40 centres (like topics), as document ids and a float32 matrix."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    matrix = (centres[rng.integers(0, 40, n)] + 0.6 * rng.normal(size=(n, dim))).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return [f"doc-{i}" for i in range(n)], matrix


def _exact(ids: list[str], matrix: np.ndarray) -> ExactVectors:
    exact = ExactVectors(dim=matrix.shape[1])
    for doc_id, v in zip(ids, matrix, strict=True):
        exact.put(doc_id, v)
    return exact


@pytest.mark.parametrize("dtype", ["f16", "f32", "i8"])
def test_ann_index_finds_the_exact_top_k(dtype: Dtype) -> None:
    ids, matrix = _clustered(3000)
    exact = _exact(ids, matrix)
    index = AnnIndex.build(ids, matrix, AnnParams(dtype=dtype, expansion_search=300))
    assert len(index) == 3000
    queries = _clustered(40, seed=1)[1]
    recalls = []
    for q in queries:
        truth_ids, truth_sims = exact.search(q, 50)
        found_ids, found_sims = index.search(q, 50)
        recalls.append(len(set(truth_ids) & set(found_ids)) / 50)
        assert found_sims == sorted(found_sims, reverse=True)
        assert found_sims[0] == pytest.approx(truth_sims[0], abs=0.02), "similarities, not distances"
    assert np.mean(recalls) >= 0.95
    # exclude= leaves the document itself out and still answers k
    ids_near, _ = index.search(matrix[7], 10, exclude="doc-7")
    assert "doc-7" not in ids_near and len(ids_near) == 10
    assert index.search(matrix[7], 10)[0][0] == "doc-7"
    assert index.search(matrix[7], 0) == ([], [])


def test_ann_index_replaces_a_changed_vector() -> None:
    ids, matrix = _clustered(500)
    index = AnnIndex.build(ids, matrix, AnnParams())
    moved = matrix[400].copy()
    index.add(["doc-3"], moved[None, :])            # doc-3 re-embedded: now where doc-400 is
    assert len(index) == 500
    near_old = index.search(matrix[3], 5)[0]
    assert "doc-3" not in near_old, "the old vector is gone"
    assert set(index.search(moved, 2)[0]) == {"doc-3", "doc-400"}
    # the same document twice in one batch: its last vector counts; new documents are appended
    index.add(["new", "new"], np.stack([matrix[10], matrix[20]]))
    assert len(index) == 501 and "new" in index
    assert set(index.search(matrix[20], 2)[0]) == {"new", "doc-20"}
    assert index.search(matrix[10], 1)[0] == ["doc-10"]
    # the refresh reads recent rows again: an unchanged vector is not added again
    index.add(["doc-30", "doc-31"], matrix[30:32])
    assert index.removed_share == pytest.approx(1 / 502)
    # removed documents are never found again
    index.remove(["doc-10", "unknown"])
    assert "doc-10" not in index and len(index) == 500
    assert "doc-10" not in index.search(matrix[10], 20)[0]
    assert index.removed_share == pytest.approx(2 / 502)   # doc-3's old key and doc-10 of 502 keys


async def test_index_is_built_in_the_background_and_queries_are_answered_meanwhile(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ids, matrix = _clustered(2000)
    vectors = TenantVectors(model="m", dim=32, exact=_exact(ids, matrix))
    cache = VectorCache(refresh_s=1, full_reload_s=600, policy=IndexPolicy(threshold=1000))
    gate = threading.Event()
    build = AnnIndex.build

    def held_build(*args: Any, **kwargs: Any) -> AnnIndex:
        gate.wait(10)   # the build runs until the test has queried and updated the vectors
        return build(*args, **kwargs)

    monkeypatch.setattr(AnnIndex, "build", held_build)
    cache._start("t", cache.build_index(vectors, "t"))   # as a query starts it: a background task
    await asyncio.sleep(0.05)
    assert vectors.ann is None and vectors.pending == []
    assert INDEX_WORK._value.get() == 1, "/metrics shows the build in progress"
    # meanwhile: answered exactly, and updates are kept for the new index
    assert top_similar(vectors, matrix[5], 1)[0] == ["doc-5"]
    await vectors.put(["doc-5", "late"], np.stack([matrix[900], matrix[901]]))
    assert top_similar(vectors, matrix[5], 1)[0] != ["doc-5"]
    gate.set()
    await cache.settle()
    assert INDEX_WORK._value.get() == 0
    assert vectors.ann is not None and vectors.exact is None and vectors.pending is None, "float32 matrix dropped"
    assert len(vectors) == 2001
    assert "doc-5" not in top_similar(vectors, matrix[5], 3)[0], "the update made during the build holds"
    assert set(top_similar(vectors, matrix[901], 2)[0]) == {"late", "doc-901"}
    # later updates go straight into the index
    await vectors.put(["later"], matrix[1500][None, :])
    assert set(top_similar(vectors, matrix[1500], 2)[0]) == {"later", "doc-1500"}


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


def test_similarities_are_scaled_between_the_semantic_rankings_first_and_last() -> None:
    params = query.validate("예산", [], 20, None)
    ids = tuple(f"00000000-0000-0000-0000-00000000000{i}" for i in range(3))
    plan = query.build_plan(params, ["예산"], semantic=query.Semantic(ids, (0.9, 0.85, 0.8)))
    assert plan.params["sem_floor"] == 0.8 and plan.params["sem_scale"] == pytest.approx(10.0)
    assert (plan.params["w_lex"], plan.params["w_sem"]) == (0.75, 0.25)
    # One similarity (or all equal): nothing to scale by, so meaning adds nothing to any score.
    single = query.build_plan(params, ["예산"], semantic=query.Semantic(ids[:1], (0.9,)))
    assert single.params["sem_scale"] == 0.0


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


def test_a_saved_index_is_restored_and_a_damaged_one_is_dropped(tmp_path: Path) -> None:
    ids, matrix = _clustered(1000)
    index = AnnIndex.build(ids, matrix, AnnParams())
    index.add(["doc-1"], matrix[2][None, :])         # a replaced key is saved as such
    store = IndexStore(tmp_path)
    watermark = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    store.save("tenant", "e5@abc", index, watermark)
    stored = store.load("tenant", "e5@abc", AnnParams())
    assert stored is not None and stored.watermark == watermark and len(stored.index) == 1000
    assert stored.index.search(matrix[500], 5) == index.search(matrix[500], 5)
    assert set(stored.index.search(matrix[2], 2)[0]) == {"doc-1", "doc-2"}
    assert store.load("tenant", "other-model", AnnParams()) is None
    assert store.load("tenant", "e5@abc", AnnParams(connectivity=16)) is None, "other settings: rebuilt"
    assert list(tmp_path.iterdir()) == []
    # damaged in any way: never loaded, the files deleted (the caller builds anew)
    for damage in ("flip", "truncate", "ids"):
        store.save("tenant", "e5@abc", index, watermark)
        index_file, meta_file = next(tmp_path.glob("*.usearch")), next(tmp_path.glob("*.json"))
        data = bytearray(index_file.read_bytes())
        if damage == "flip":
            data[len(data) // 2] ^= 0xFF
            index_file.write_bytes(bytes(data))
        else:   # consistent checksum, inconsistent contents
            meta = json.loads(meta_file.read_text())
            if damage == "truncate":
                index_file.write_bytes(bytes(data[: len(data) // 3]))
            else:
                meta["ids"] = meta["ids"][:-3]
            meta["sha256"] = hashlib.sha256(index_file.read_bytes()).hexdigest()
            meta_file.write_text(json.dumps(meta))
        assert store.load("tenant", "e5@abc", AnnParams()) is None, damage
        assert list(tmp_path.iterdir()) == [], damage
    store.save("tenant", "e5@abc", index, watermark)
    meta_file.write_text("{not json")
    assert store.load("tenant", "e5@abc", AnnParams()) is None and list(tmp_path.iterdir()) == []


def test_the_ann_module_and_onnxruntime_load_together_in_one_process() -> None:
    """usearch loaded before onnxruntime crashed the process (services/search/_native_order.py)."""
    import subprocess
    import sys

    code = "import services.search.ann\nimport onnxruntime\nprint('loaded')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr[-2000:]
