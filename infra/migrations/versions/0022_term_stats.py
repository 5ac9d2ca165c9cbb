"""Search: the document frequencies of each large department's common terms, counted in the background.

BM25 needs a query term's document frequency (df). The search statement counted it from the term's
index range when its replica did not know it yet: for a common term of a department of 500,000
documents that is 100,000 and more postings, 50-200 ms on the first search with the term. Now the
upload service's term statistics job (services/upload/term_stats.py) counts them once for the
whole department and keeps them here; the search statement takes a term's figures from this table
(scaled to the department's size now) and counts only the terms it does not hold (rare ones, which
are quick to count).

- `documents.term_stats`: per tenant and term with at least the job's minimum of postings, its df
  and number of postings, counted when the tenant held `n_at` documents. Row-level security by
  tenant like every documents table; written by upload (inside the tenant's transaction), read by
  search.
- `documents.search_stats.terms_counted_n`, `terms_counted_at`: when the job last counted the
  tenant, and its document count then.
- `documents.term_stats_due(min_documents, slack)`: the tenants the job should count (at least
  `min_documents` documents, never counted or grown or shrunk by more than `slack` of their size
  since). SECURITY DEFINER, tenant ids only, for doctag_upload.

Revision ID: 0022_term_stats
Revises: 0021_shadow
Create Date: 2026-11-30
"""
from alembic import op

revision = "0022_term_stats"
down_revision = "0021_shadow"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE documents.term_stats (
  tenant_id  uuid NOT NULL,
  term       text NOT NULL,
  df         bigint NOT NULL CHECK (df > 0),
  postings   bigint NOT NULL CHECK (postings >= df),
  n_at       bigint NOT NULL CHECK (n_at > 0),
  PRIMARY KEY (tenant_id, term)
);
ALTER TABLE documents.term_stats ENABLE ROW LEVEL SECURITY;
ALTER TABLE documents.term_stats FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON documents.term_stats
  USING (tenant_id = public.app_tenant_id()) WITH CHECK (tenant_id = public.app_tenant_id());
GRANT SELECT, INSERT, DELETE ON documents.term_stats TO doctag_upload;
GRANT SELECT ON documents.term_stats TO doctag_search;

ALTER TABLE documents.search_stats ADD COLUMN terms_counted_n bigint, ADD COLUMN terms_counted_at timestamptz;

CREATE FUNCTION documents.term_stats_due(min_documents bigint, slack double precision)
RETURNS TABLE (tenant_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
  SELECT s.tenant_id FROM documents.search_stats s
  WHERE s.documents >= min_documents
    AND (s.terms_counted_n IS NULL OR abs(s.documents - s.terms_counted_n) > slack * s.terms_counted_n)
  ORDER BY s.terms_counted_at NULLS FIRST, s.tenant_id
$f$;
REVOKE ALL ON FUNCTION documents.term_stats_due(bigint, double precision) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION documents.term_stats_due(bigint, double precision) TO doctag_upload;
"""

DOWNGRADE = r"""
DROP FUNCTION documents.term_stats_due(bigint, double precision);
ALTER TABLE documents.search_stats DROP COLUMN terms_counted_n, DROP COLUMN terms_counted_at;
DROP TABLE documents.term_stats;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
