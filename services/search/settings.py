"""Search service settings (environment variables with the `DOCTAG_` prefix)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.common.settings import CommonSettings

from .ann import AnnParams
from .query import Fusion
from .vectors import IndexPolicy


class SearchSettings(CommonSettings):
    service_name: str = "search"
    # Read-only role: SELECT on documents.documents and documents.document_tags, subject to RLS.
    db_user: str = "doctag_search"

    http_port: int = 8111
    grpc_port: int = 9111
    # Seconds in-flight gRPC calls get to finish on shutdown.
    shutdown_grace_s: float = 5.0

    # Hybrid search (services/search/semantic.py). Query vectors come from model-serving's Embed.
    semantic_search: bool = Field(True, description="fuse semantic similarity (e5 embeddings) into text queries")
    model_grpc_target: str = Field("127.0.0.1:9121", description="model-serving's gRPC address (Embed)")
    embed_timeout_ms: int = Field(300, ge=1, description="deadline of a query's Embed call; past it: words only")
    embed_retry_s: float = Field(5.0, ge=0, description="after a failed Embed, search by words only this long "
                                                        "before asking model-serving again")
    vector_refresh_s: float = Field(2.0, ge=0, description="how often a tenant's cached vectors are brought up "
                                                           "to date (newly tagged documents)")
    vector_late_commit_s: float = Field(60.0, ge=0, description="a refresh reads again what was written this long "
                                                                "before the previous read began (a transaction that "
                                                                "started earlier may commit after it)")
    vector_full_reload_s: float = Field(600.0, gt=0, description="how often a tenant's cache is rebuilt whole")
    # The ANN index of large tenants (services/search/ann.py); defaults measured on e5 vectors (semantic.py).
    ann_threshold: int = Field(20_000, ge=0, description="a tenant with at least this many document vectors is "
                                                         "searched through an HNSW index; fewer are scored exactly")
    ann_dtype: Literal["f16", "f32", "i8"] = Field("f16", description="how the index stores vectors (f16: half "
                                                                       "of f32's memory, same recall)")
    ann_connectivity: int = Field(32, ge=2, le=128, description="HNSW edges per node (M): recall and memory")
    ann_expansion_add: int = Field(128, ge=1, description="HNSW candidates examined per insertion (efConstruction)")
    ann_expansion_search: int = Field(300, ge=1, description="HNSW candidates examined per query (ef): recall "
                                                             "against latency; never below semantic_candidates")
    ann_build_threads: int = Field(1, ge=1, description="threads building a tenant's index in the background")
    ann_persist: bool = Field(True, description="keep built indexes in <state_dir>/search-index, so a restarted "
                                                "replica does not build them again")
    semantic_candidates: int = Field(100, ge=1, le=10_000, description="semantic ranking length fused with BM25")
    # The convex combination of normalised scores, tuned on the development sets (README, "Search").
    fusion_w_lex: float = Field(0.75, ge=0, description="weight of BM25 over the best BM25 of the query")
    fusion_w_sem: float = Field(0.25, ge=0, description="weight of the similarity, scaled between the semantic "
                                                        "ranking's first and last")
    fusion_sem_add: int = Field(10, ge=0, description="semantic-only documents added to the word matches at most")
    fusion_min_sim: float = Field(0.85, ge=-1, le=1, description="cosine similarity a semantic-only document needs")
    similar_max_limit: int = 50
    # PostgreSQL compiles a statement whose estimated cost passes `jit_above_cost` (100,000); a search's
    # estimates pass it where a subquery's cost is counted for every row (a browse's total: 720 ms of
    # compiling for a statement that ran in 110 ms). No search statement runs long enough to gain from it.
    db_jit: bool = Field(False, description="PostgreSQL's JIT compilation of the search statements")

    def db_session_options(self) -> str:
        """The search sessions' planner settings (`SESSION_OPTIONS`), and JIT off unless `db_jit`."""
        return SESSION_OPTIONS + ("" if self.db_jit else " -c jit=off")

    def index_policy(self) -> IndexPolicy:
        params = AnnParams(dtype=self.ann_dtype, connectivity=self.ann_connectivity,
                           expansion_add=self.ann_expansion_add, expansion_search=self.ann_expansion_search)
        return IndexPolicy(threshold=self.ann_threshold, params=params, build_threads=self.ann_build_threads)

    def fusion(self) -> Fusion:
        return Fusion(w_lex=self.fusion_w_lex, w_sem=self.fusion_w_sem,
                      sem_add=self.fusion_sem_add, min_sim=self.fusion_min_sim)


# Every search statement is planned for its own values. psycopg prepares a statement once a connection has
# run it five times, and PostgreSQL may then keep one generic plan for every value, while the best plan
# depends on them: a tag on 107 documents or on 473,000, a term with 50 postings or 80,000. At 1,000,000
# documents a generic plan browsed a small tag newest first by walking the department's 500,000 documents
# (2.2-3.0 s instead of 16 ms), and the words-alone mix's p95 went from 61 to 41 ms with it gone (README).
SESSION_OPTIONS = "-c plan_cache_mode=force_custom_plan"
