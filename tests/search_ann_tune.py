"""Tunes the semantic ANN index (services/search/ann.py) on real multilingual-e5-small vectors.

    python -m tests.search_ann_tune [--data ../shared/data] [--docs 20000] [--queries 500]

Documents: news headlines, movie reviews and petitions from the shared data, embedded as
passages by the base e5 embedder run in this process (the one model-serving runs); queries:
other headlines embedded as queries. The vectors are cached under /tmp (never committed), so a
rerun costs only the grid. For each setting it prints, as JSON lines: recall@10 and @100 of the
index against exact scoring, milliseconds per query (one thread), build seconds (one thread)
and bytes per vector of the index (in memory, reserved capacity included; and as saved).
"""
from __future__ import annotations

import argparse
import gzip
import itertools
import json
import time
from pathlib import Path

import numpy as np

from services.search.ann import AnnIndex, AnnParams
from services.search.vectors import ExactVectors

CACHE = Path("/tmp/doctag_ann_tune")
GRID: dict[str, tuple[object, ...]] = {
    "dtype": ("f16", "f32", "i8"),
    "connectivity": (16, 32),
    "expansion_add": (128,),
}
EXPANSIONS = (100, 150, 200, 300)
BATCH = 64


def _texts(data: Path, docs: int, queries: int) -> tuple[list[str], list[str]]:
    """Passages (headlines, reviews, petitions) and queries (other headlines), disjoint."""
    with (data / "headlines_train.jsonl").open(encoding="utf-8") as f:
        headlines = [json.loads(line)["text"] for line in f]
    with (data / "petitions_train.jsonl").open(encoding="utf-8") as f:
        petitions = [(p := json.loads(line))["title"] + "\n" + p["text"] for line in f]
    n_petitions = min(len(petitions), docs // 20)
    n_headlines = docs * 6 // 10
    n_reviews = docs - n_petitions - n_headlines
    with gzip.open(data / "nsmc_reviews_unlabeled.txt.gz", "rt", encoding="utf-8") as f:
        reviews = [line.strip() for line in itertools.islice(f, n_reviews * 2) if len(line.strip()) >= 10][:n_reviews]
    passages = headlines[:n_headlines] + reviews + petitions[:n_petitions]
    return passages, headlines[-queries:]


def _embed(texts: list[str], mode: str) -> np.ndarray:
    from services.model_serving.models.base import InferenceOptions
    from services.model_serving.models.embedder import E5Embedder

    embedder = E5Embedder.load(InferenceOptions())
    out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))   # similar lengths: little padding
    started = time.perf_counter()
    for start in range(0, len(order), BATCH):
        chunk = order[start:start + BATCH]
        prepared = embedder.prepare_mode([texts[i] for i in chunk], mode)
        windows = [w for p in prepared for w in p.windows]
        outputs = embedder.forward(windows)
        row = 0
        for i, p in zip(chunk, prepared, strict=True):
            out[i] = embedder.finish(p, outputs[row:row + len(p.windows)])
            row += len(p.windows)
        if start // BATCH % 20 == 0:
            print(f"# {mode}: {start + len(chunk)}/{len(texts)} in {time.perf_counter() - started:.0f}s", flush=True)
    return out


def vectors(data: Path, docs: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    """(documents, queries) as unit float32 rows, embedded once and cached under /tmp."""
    CACHE.mkdir(exist_ok=True)
    doc_file, query_file = CACHE / f"docs_{docs}.npy", CACHE / f"queries_{queries}.npy"
    if not doc_file.exists() or not query_file.exists():
        passages, questions = _texts(data, docs, queries)
        np.save(query_file, _embed(questions, "query"))
        np.save(doc_file, _embed(passages, "passage"))
    return np.load(doc_file), np.load(query_file)


def _recall(found: list[list[str]], truth: list[list[str]], k: int) -> float:
    shares = [len(set(f[:k]) & set(t[:k])) / max(1, len(t[:k])) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(shares))


def measure(docs: np.ndarray, queries: np.ndarray, params: AnnParams,
            expansions: tuple[int, ...]) -> list[dict[str, object]]:
    """One index per graph setting; each query expansion measured on it."""
    ids = [f"d{i}" for i in range(len(docs))]
    exact = ExactVectors(dim=docs.shape[1])
    for doc_id, v in zip(ids, docs, strict=True):
        exact.put(doc_id, v)
    started = time.perf_counter()
    truth = [exact.search(q, 100)[0] for q in queries]
    exact_ms = (time.perf_counter() - started) * 1000 / len(queries)
    started = time.perf_counter()
    index = AnnIndex.build(ids, docs, params, threads=1)
    build_s = time.perf_counter() - started
    results = []
    for expansion in expansions:
        index.set_expansion_search(expansion)
        started = time.perf_counter()
        found = [index.search(q, 100)[0] for q in queries]
        per_query_ms = (time.perf_counter() - started) * 1000 / len(queries)
        results.append({**index.params.__dict__, "n": len(docs), "recall@10": round(_recall(found, truth, 10), 4),
                        "recall@100": round(_recall(found, truth, 100), 4), "ms_per_query": round(per_query_ms, 3),
                        "exact_ms_per_query": round(exact_ms, 3), "build_s": round(build_s, 2),
                        "index_bytes_per_vector": round(index.memory_bytes() / len(docs)),
                        "saved_bytes_per_vector": round(index.serialized_bytes() / len(docs))})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--sizes", default="", help="comma-separated subset sizes (random documents): how recall "
                                                     "falls as a tenant grows; default: all documents")
    parser.add_argument("--dtypes", default=",".join(str(d) for d in GRID["dtype"]))
    args = parser.parse_args()
    docs, queries = vectors(args.data, args.docs, args.queries)
    grid = {**GRID, "dtype": tuple(args.dtypes.split(","))}
    order = np.random.default_rng(0).permutation(len(docs))
    for size in [int(n) for n in args.sizes.split(",") if n] or [len(docs)]:
        subset = docs[np.sort(order[:size])]
        for values in itertools.product(*grid.values()):
            params = AnnParams(**dict(zip(grid, values, strict=True)))  # type: ignore[arg-type]
            for result in measure(subset, queries, params, EXPANSIONS):
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
