"""Search at scale: impact-ordered postings.

`documents.document_terms.impact` is a posting's BM25 term-frequency saturation in its field,
`W * tf / (W * tf + k1 * (1 - b + b * field_length / L))` with the field's weight W (title 2,
text 1, as in services/search/query.py) and a fixed reference length L (title 10, text 100
terms). It is a generated column, so every writer (upload, tagging, reindex, bulk COPY) fills it
without knowing of it, and adding it rewrites (backfills) the existing postings.

It only orders a term's postings, best first, so a search reads each query term's top postings
from the index `document_terms_impact` instead of all of them; the documents found are then
scored by exact BM25F with the tenant's real average lengths (search_stats). The index starts
with (tenant_id, term) as `document_terms_tenant_term` did, and covers the same columns, so it
replaces it (counting a term's documents still reads one index range).

Revision ID: 0016_search_scale
Revises: 0015_user_tags
Create Date: 2026-11-30
"""
from alembic import op

revision = "0016_search_scale"
down_revision = "0015_user_tags"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE documents.document_terms ADD COLUMN impact real GENERATED ALWAYS AS (
  (CASE WHEN field = 'title' THEN 2.0 ELSE 1.0 END) * tf
  / ((CASE WHEN field = 'title' THEN 2.0 ELSE 1.0 END) * tf
     + 1.2 * (0.25 + 0.75 * field_length / (CASE WHEN field = 'title' THEN 10.0 ELSE 100.0 END)))
) STORED;
CREATE INDEX document_terms_impact ON documents.document_terms (tenant_id, term, impact DESC)
  INCLUDE (document_id, field, tf, field_length);
DROP INDEX documents.document_terms_tenant_term;
"""

DOWNGRADE = r"""
CREATE INDEX document_terms_tenant_term ON documents.document_terms (tenant_id, term)
  INCLUDE (document_id, field, tf, field_length);
DROP INDEX documents.document_terms_impact;
ALTER TABLE documents.document_terms DROP COLUMN impact;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
