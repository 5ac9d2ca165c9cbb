"""Tunes hybrid search's fusion settings on the development set (never on a test set).

    doctag search eval ... --keep-tenant      # loads the dev corpus with embeddings; prints the tenant slug
    python -m tests.search_tune SLUG          # grid over the fusion settings; best by nDCG@10 first
    python -m tests.search_tune SLUG QUERIES QRELS [w_lex,...]   # another set (the known-item one)

Queries run through `services.search.engine.search` exactly as `doctag search eval` runs them,
with the query vectors from a model-serving started in this process (tests/embedding_server.py).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import sys
from pathlib import Path
from typing import Any

from services.cli import admin, search_cmds
from services.cli.main import OpsSettings
from services.search.query import Fusion
from tests.embedding_server import embedding_server
from tests.search_devset import QRELS, QUERIES

# Convex fusion (query.Fusion): w_lex is BM25's weight, w_sem = 1 - w_lex. sem_add beyond 5 and min_sim
# 0.80-0.87 made no difference on either development set.
GRID = {
    "w_lex": (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9),
    "sem_add": (10,),
    "min_sim": (0.85,),
}


def _fusion(values: dict[str, Any]) -> Fusion:
    return Fusion(w_sem=1 - values["w_lex"], **values)


async def _grid(slug: str, target: str, queries_path: Path = QUERIES, qrels_path: Path = QRELS,
                grid: dict[str, tuple[Any, ...]] = GRID) -> list[dict[str, Any]]:
    settings = OpsSettings()
    with admin._connect(settings.admin_dsn()) as conn:
        tenant = admin._tenant_id(conn, slug)
        rows = conn.execute("SELECT id, filename FROM documents.documents WHERE tenant_id = %s", (tenant,)).fetchall()
    ids = {str(r["id"]): r["filename"].removesuffix(".txt") for r in rows}
    queries = search_cmds.read_queries(queries_path)
    qrels = search_cmds.read_qrels(qrels_path)
    results = []
    semantic = search_cmds.semantic_for(target)   # one query encoder (and its cache) for the whole grid
    try:
        for values in itertools.product(*grid.values()):
            setting = dict(zip(grid, values, strict=True))
            semantic.fusion = _fusion(setting)
            runs, degraded = await search_cmds._run_queries(tenant, queries, ids, semantic)
            results.append({**setting, **search_cmds.summarise(runs, qrels), "degraded": degraded})
    finally:
        await semantic.close()
    return sorted(results, key=lambda r: (-r["ndcg@10"], -r["mrr@10"]))


def main(argv: list[str]) -> None:
    slug = argv[0]
    queries, qrels = (Path(argv[1]), Path(argv[2])) if len(argv) >= 3 else (QUERIES, QRELS)
    grid = dict(GRID)
    if len(argv) >= 4:
        grid["w_lex"] = tuple(float(w) for w in argv[3].split(","))
    with embedding_server() as target:
        for row in asyncio.run(_grid(slug, target, queries, qrels, grid)):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
