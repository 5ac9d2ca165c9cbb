"""Search: a deleted document's tags are hidden from the search role by a flag, not by a lookup per row.

Since 0007 the search role reads `document_tags` through a restrictive policy that looks the row's
document up in `documents` (is it deleted?) for every tag row read. A search under a tag filter
reads every row of the tag (the documents carrying it): at 500,000 documents a tag on 4,000 of them
cost 17-20 ms in those lookups alone, a third or more of that statement (41-63 ms before, 24-44 ms
after; `make bench-search`'s corpus).

- `document_tags.document_deleted`: whether the tag's document is in the bin. Kept by triggers,
  so no writer has to remember it: when a document's `deleted_at` changes (delete, restore) its
  tags follow; a tag written for a document already deleted starts hidden.
- The search role's policy on `document_tags` becomes `NOT document_deleted`: the same rows as
  before, read without a second table.

Revision ID: 0023_tag_deleted_flag
Revises: 0022_term_stats
Create Date: 2026-11-30
"""
from alembic import op

revision = "0023_tag_deleted_flag"
down_revision = "0022_term_stats"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE documents.document_tags ADD COLUMN document_deleted boolean NOT NULL DEFAULT false;
UPDATE documents.document_tags t SET document_deleted = true
  FROM documents.documents d WHERE d.id = t.document_id AND d.deleted_at IS NOT NULL;

CREATE FUNCTION documents.tags_follow_deletion() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  UPDATE documents.document_tags SET document_deleted = (NEW.deleted_at IS NOT NULL)
  WHERE document_id = NEW.id AND document_deleted <> (NEW.deleted_at IS NOT NULL);
  RETURN NULL;
END
$f$;
CREATE TRIGGER tags_follow_deletion AFTER UPDATE OF deleted_at ON documents.documents
  FOR EACH ROW WHEN (OLD.deleted_at IS DISTINCT FROM NEW.deleted_at)
  EXECUTE FUNCTION documents.tags_follow_deletion();

CREATE FUNCTION documents.tag_starts_hidden() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  NEW.document_deleted := EXISTS (SELECT 1 FROM documents.documents d
                                  WHERE d.id = NEW.document_id AND d.deleted_at IS NOT NULL);
  RETURN NEW;
END
$f$;
CREATE TRIGGER tag_starts_hidden BEFORE INSERT ON documents.document_tags
  FOR EACH ROW EXECUTE FUNCTION documents.tag_starts_hidden();

DROP POLICY search_hides_deleted ON documents.document_tags;
CREATE POLICY search_hides_deleted ON documents.document_tags AS RESTRICTIVE FOR SELECT TO doctag_search
  USING (NOT document_deleted);
"""

DOWNGRADE = r"""
DROP POLICY search_hides_deleted ON documents.document_tags;
CREATE POLICY search_hides_deleted ON documents.document_tags AS RESTRICTIVE FOR SELECT TO doctag_search
  USING (EXISTS (SELECT 1 FROM documents.documents d
                 WHERE d.id = document_tags.document_id AND d.deleted_at IS NULL));
DROP TRIGGER tag_starts_hidden ON documents.document_tags;
DROP FUNCTION documents.tag_starts_hidden();
DROP TRIGGER tags_follow_deletion ON documents.documents;
DROP FUNCTION documents.tags_follow_deletion();
ALTER TABLE documents.document_tags DROP COLUMN document_deleted;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
