"""Leaner indexing and dispatch, after review of 0004-0008.

- `documents.search_terms` and its generated `search_vector` (with its GIN index) were written on
  every upload and tagging result but read by nothing since ranked search (0004): dropped.
- `documents.indexed_at`: when the document's postings were last written. NULL marks a document
  stored before 0004 (or one whose re-index has not run), so `doctag search reindex --missing-only`
  finds exactly those through a partial index instead of testing every document for postings
  (documents whose text has no terms were found "missing" on every run).
- The search-statistics trigger applies one delta on UPDATE instead of removing and adding the row.
- A purged document's unsent job is marked sent as well as finished, so the relay never publishes
  a job whose document is gone.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UPGRADE = r"""
DROP INDEX IF EXISTS documents.documents_search_vector;
ALTER TABLE documents.documents DROP COLUMN search_vector, DROP COLUMN search_terms;

ALTER TABLE documents.documents ADD COLUMN indexed_at timestamptz;
UPDATE documents.documents d SET indexed_at = now()
  WHERE EXISTS (SELECT 1 FROM documents.document_terms t WHERE t.document_id = d.id);
CREATE INDEX documents_not_indexed ON documents.documents (tenant_id, id) WHERE indexed_at IS NULL;

CREATE OR REPLACE FUNCTION documents.track_search_stats() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  IF TG_OP = 'UPDATE' AND OLD.tenant_id = NEW.tenant_id THEN
    INSERT INTO documents.search_stats AS s (tenant_id, documents, title_terms, text_terms)
    VALUES (NEW.tenant_id, 0, NEW.title_length - OLD.title_length, NEW.text_length - OLD.text_length)
    ON CONFLICT (tenant_id) DO UPDATE SET title_terms = s.title_terms + EXCLUDED.title_terms,
      text_terms = s.text_terms + EXCLUDED.text_terms;
    RETURN NULL;
  END IF;
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    INSERT INTO documents.search_stats AS s (tenant_id, documents, title_terms, text_terms)
    VALUES (OLD.tenant_id, -1, -OLD.title_length, -OLD.text_length)
    ON CONFLICT (tenant_id) DO UPDATE SET documents = s.documents + EXCLUDED.documents,
      title_terms = s.title_terms + EXCLUDED.title_terms, text_terms = s.text_terms + EXCLUDED.text_terms;
  END IF;
  IF TG_OP IN ('UPDATE', 'INSERT') THEN
    INSERT INTO documents.search_stats AS s (tenant_id, documents, title_terms, text_terms)
    VALUES (NEW.tenant_id, 1, NEW.title_length, NEW.text_length)
    ON CONFLICT (tenant_id) DO UPDATE SET documents = s.documents + EXCLUDED.documents,
      title_terms = s.title_terms + EXCLUDED.title_terms, text_terms = s.text_terms + EXCLUDED.text_terms;
  END IF;
  RETURN NULL;
END $f$;

CREATE OR REPLACE FUNCTION documents.finish_dispatched_job() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  UPDATE documents.outbox SET finished_at = now(), sent_at = coalesce(sent_at, now())
    WHERE document_id = OLD.id AND finished_at IS NULL;
  RETURN NULL;
END $f$;
"""

DOWNGRADE = r"""
DROP INDEX documents.documents_not_indexed;
ALTER TABLE documents.documents DROP COLUMN indexed_at;
ALTER TABLE documents.documents ADD COLUMN search_terms text,
  ADD COLUMN search_vector tsvector GENERATED ALWAYS AS (to_tsvector('simple', coalesce(search_terms, ''))) STORED;
CREATE INDEX documents_search_vector ON documents.documents USING gin (search_vector);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
