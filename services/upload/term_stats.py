"""Term statistics job: counts each large department's common terms for search (migration 0022).

Search ranks by BM25, which needs each query term's document frequency. Counting it while a user
waits costs 50-200 ms for a common term of a department of 500,000 documents, so this job counts
them ahead: for every department with at least `min_documents` documents whose size moved by more
than `slack` since its last count, the terms with at least `min_postings` postings, in one pass over
its postings (tens of seconds at 500,000 documents, in the background). Search scales a stored
figure to the department's size now and counts live only the terms not stored (the rare ones).

Every upload replica runs one, like the purge job; a transaction-level advisory lock per department
keeps two replicas from counting the same department at once.
"""
from __future__ import annotations

import logging
import time

from prometheus_client import Counter, Histogram

from services.common.db import Database

from .periodic import PeriodicJob

log = logging.getLogger(__name__)

COUNTED = Counter("doctag_term_stats_tenants_counted_total", "Departments whose common terms were counted for search")
ERRORS = Counter("doctag_term_stats_errors_total", "Term statistics passes that failed")
SECONDS = Histogram("doctag_term_stats_seconds", "Time to count one department's common terms",
                    buckets=(0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600))

_COUNT = (
    "INSERT INTO documents.term_stats (tenant_id, term, df, postings, n_at) "
    "SELECT public.app_tenant_id(), p.term, count(DISTINCT p.document_id), count(*), %(n)s "
    "FROM documents.document_terms p WHERE p.tenant_id = public.app_tenant_id() "
    "GROUP BY p.term HAVING count(*) >= %(min_postings)s"
)


class TermStatsJob(PeriodicJob):
    name = "term-stats-job"

    def __init__(self, db: Database, *, interval_seconds: float, min_documents: int, min_postings: int,
                 slack: float) -> None:
        super().__init__(interval_seconds=interval_seconds, errors=ERRORS)
        self.db = db
        self.min_documents = min_documents
        self.min_postings = min_postings
        self.slack = slack

    async def run_once(self) -> int:
        """Counts every department that is due; returns how many were counted."""
        async with self.db.transaction() as conn:
            rows = await (await conn.execute("SELECT tenant_id FROM documents.term_stats_due(%s, %s)",
                                             (self.min_documents, self.slack))).fetchall()
        counted = 0
        for row in rows:
            if self.stopping:
                break
            counted += await self.count_tenant(str(row["tenant_id"]))
        return counted

    async def count_tenant(self, tenant: str) -> int:
        """Replaces the tenant's stored figures with a fresh count; 0 when another replica is at it."""
        started = time.monotonic()
        async with self.db.tenant_transaction(tenant) as conn:
            locked = await (await conn.execute("SELECT pg_try_advisory_xact_lock(hashtext('term-stats:' || %s))",
                                               (tenant,))).fetchone()
            if not locked or not locked["pg_try_advisory_xact_lock"]:
                return 0
            stats = await (await conn.execute("SELECT documents FROM documents.search_stats "
                                              "WHERE tenant_id = public.app_tenant_id()")).fetchone()
            if stats is None or stats["documents"] <= 0:
                return 0
            await conn.execute("DELETE FROM documents.term_stats")
            await conn.execute(_COUNT, {"n": stats["documents"], "min_postings": self.min_postings})
            await conn.execute("UPDATE documents.search_stats SET terms_counted_n = %s, terms_counted_at = now() "
                               "WHERE tenant_id = public.app_tenant_id()", (stats["documents"],))
        seconds = time.monotonic() - started
        SECONDS.observe(seconds)
        COUNTED.inc()
        log.info("counted a department's common terms for search",
                 extra={"tenant_id": tenant, "documents": stats["documents"], "seconds": round(seconds, 1)})
        return 1
