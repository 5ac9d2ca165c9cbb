"""User tag corrections, and who uploaded a document by name.

- `documents.document_tags.source` is now checked: `model` (written by tagging results) or
  `user` (added by a person through `POST /api/v1/documents/{id}/tags`, score 1, `created_by` set).
  The two kinds are kept apart by the primary key (document, source, tag).
- `documents.tag_rejections`: model tags a person removed from a document. The model row is
  deleted (so the list, search filters and facets stop showing it at once, with no change to how
  search reads tags), and the rejection keeps a later tagging result of the same document from
  bringing the tag back. The audit log keeps the full record (tag, model score and version, who,
  when): the feedback later training learns from.
- `documents.documents.created_by_name`: the uploader's username at upload time (upload cannot
  read the identity schema); filled for existing documents from their `document.uploaded` entry.

Revision ID: 0015_user_tags
Revises: 0014_gateway_identity
Create Date: 2026-11-30
"""
from alembic import op

revision = "0015_user_tags"
down_revision = "0014_gateway_identity"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE documents.document_tags
  ADD CONSTRAINT document_tags_source CHECK (source IN ('model', 'user')),
  ADD COLUMN created_by uuid;

CREATE TABLE documents.tag_rejections (
  tenant_id    uuid NOT NULL,
  document_id  uuid NOT NULL REFERENCES documents.documents(id) ON DELETE CASCADE,
  tag          text NOT NULL,
  rejected_by  uuid,
  rejected_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (document_id, tag)
);
ALTER TABLE documents.tag_rejections ENABLE ROW LEVEL SECURITY;
ALTER TABLE documents.tag_rejections FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON documents.tag_rejections
  USING (tenant_id = public.app_tenant_id()) WITH CHECK (tenant_id = public.app_tenant_id());
GRANT SELECT, INSERT, DELETE ON documents.tag_rejections TO doctag_upload;

ALTER TABLE documents.documents ADD COLUMN created_by_name text;
UPDATE documents.documents d SET created_by_name = a.actor_name
  FROM (SELECT DISTINCT ON (document_id) document_id, actor_name FROM documents.audit_log
        WHERE action = 'document.uploaded' AND document_id IS NOT NULL ORDER BY document_id, at) a
  WHERE a.document_id = d.id;
"""

DOWNGRADE = r"""
ALTER TABLE documents.documents DROP COLUMN created_by_name;
DROP TABLE documents.tag_rejections;
DELETE FROM documents.document_tags WHERE source NOT IN ('model', 'user');
ALTER TABLE documents.document_tags DROP CONSTRAINT document_tags_source, DROP COLUMN created_by;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
