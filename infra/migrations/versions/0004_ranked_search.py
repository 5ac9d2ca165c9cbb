"""Ranked search: a per-tenant inverted index of Korean analyser terms for BM25.

`documents.document_terms` holds one row per (document, field, term) with the term's
frequency and the field's length in terms (copied into each row so that scoring reads
the postings index only, never the documents table). `documents.search_stats` keeps
per tenant the number of documents and the summed field lengths (BM25's N and average
lengths) so a query does not count the tenant's documents; a trigger on
documents.documents maintains it from the two length columns added here, so inserts,
re-indexing and deletes (including the ON DELETE CASCADE of the term rows) keep it
exact. Document frequencies are counted at query time, for the query's terms only,
from the (tenant_id, term) index.

Existing documents are not re-analysed here (that needs the Python analyser and can
take long on a big collection): run `doctag search reindex` after upgrading. Until
then they are found by the substring fallback only.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE documents.documents
  ADD COLUMN title_length integer NOT NULL DEFAULT 0 CHECK (title_length >= 0),
  ADD COLUMN text_length  integer NOT NULL DEFAULT 0 CHECK (text_length >= 0);

CREATE TABLE documents.document_terms (
  tenant_id     uuid NOT NULL,
  document_id   uuid NOT NULL REFERENCES documents.documents(id) ON DELETE CASCADE,
  field         text NOT NULL CHECK (field IN ('title', 'text')),
  term          text NOT NULL CHECK (length(term) BETWEEN 1 AND 200),
  tf            integer NOT NULL CHECK (tf > 0),
  field_length  integer NOT NULL CHECK (field_length > 0),
  PRIMARY KEY (document_id, term, field)
);
-- Postings of one term in one tenant, covering what BM25 needs.
CREATE INDEX document_terms_tenant_term ON documents.document_terms (tenant_id, term)
  INCLUDE (document_id, field, tf, field_length);

CREATE TABLE documents.search_stats (
  tenant_id     uuid PRIMARY KEY,
  documents     bigint NOT NULL DEFAULT 0,
  title_terms   bigint NOT NULL DEFAULT 0,
  text_terms    bigint NOT NULL DEFAULT 0
);

DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['document_terms','search_stats'] LOOP
    EXECUTE format('ALTER TABLE documents.%I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE documents.%I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format('CREATE POLICY tenant_isolation ON documents.%I USING (tenant_id = public.app_tenant_id()) WITH CHECK (tenant_id = public.app_tenant_id())', t);
  END LOOP;
END $$;

-- Runs as the writing role (upload), inside its tenant transaction.
CREATE FUNCTION documents.track_search_stats() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
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
CREATE TRIGGER documents_search_stats
  AFTER INSERT OR DELETE OR UPDATE OF title_length, text_length, tenant_id ON documents.documents
  FOR EACH ROW EXECUTE FUNCTION documents.track_search_stats();

-- Documents that exist already count as documents (their lengths are 0 until re-indexed).
INSERT INTO documents.search_stats (tenant_id, documents)
SELECT tenant_id, count(*) FROM documents.documents GROUP BY tenant_id;

GRANT SELECT, INSERT, UPDATE, DELETE ON documents.document_terms, documents.search_stats TO doctag_upload;
GRANT SELECT ON documents.document_terms, documents.search_stats TO doctag_search;
"""

DOWNGRADE = r"""
DROP TRIGGER documents_search_stats ON documents.documents;
DROP FUNCTION documents.track_search_stats();
DROP TABLE documents.search_stats;
DROP TABLE documents.document_terms;
ALTER TABLE documents.documents DROP COLUMN title_length, DROP COLUMN text_length;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
