"""Semantic search: one passage embedding per document, and the versions a document was indexed with.

- `documents.document_embeddings`: the document's passage embedding from model-serving's `Embed`
  (the base multilingual-e5-small), float32 little-endian in a bytea, with the embedding model
  and its version. bytea rather than real[]: the vector is read back as one buffer
  (`numpy.frombuffer`, no per-element parsing), and at 384 dimensions (1,536 bytes) it stays
  inline in the row. No pgvector here: similarity is computed by the search service (exact dot
  products over vectors it caches per tenant from this table, which stays the source of truth).
- `documents.analyser_version`: the Korean analyser (services/common/korean.py ANALYSER_VERSION)
  that wrote the document's postings; NULL for postings written before this migration, which
  `doctag search reindex` treats as stale.
- The search role sees embeddings of live documents only, like tags (0007).

Revision ID: 0012_search_embeddings
Revises: 0011
Create Date: 2026-11-30
"""
from alembic import op

revision = "0012_search_embeddings"
down_revision = "0011"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE documents.documents ADD COLUMN analyser_version text;

CREATE TABLE documents.document_embeddings (
  document_id uuid PRIMARY KEY REFERENCES documents.documents (id) ON DELETE CASCADE,
  tenant_id uuid NOT NULL,
  model text NOT NULL,
  version text NOT NULL,
  dim integer NOT NULL CHECK (dim > 0),
  vector bytea NOT NULL CHECK (octet_length(vector) = 4 * dim),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX document_embeddings_tenant_updated ON documents.document_embeddings (tenant_id, updated_at);

ALTER TABLE documents.document_embeddings ENABLE ROW LEVEL SECURITY;
ALTER TABLE documents.document_embeddings FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON documents.document_embeddings
  USING (tenant_id = public.app_tenant_id()) WITH CHECK (tenant_id = public.app_tenant_id());
CREATE POLICY search_hides_deleted ON documents.document_embeddings AS RESTRICTIVE FOR SELECT TO doctag_search
  USING (EXISTS (SELECT 1 FROM documents.documents d
                 WHERE d.id = document_embeddings.document_id AND d.deleted_at IS NULL));

GRANT SELECT, INSERT, UPDATE, DELETE ON documents.document_embeddings TO doctag_upload;
GRANT SELECT ON documents.document_embeddings TO doctag_search;
"""

DOWNGRADE = r"""
DROP TABLE documents.document_embeddings;
ALTER TABLE documents.documents DROP COLUMN analyser_version;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
