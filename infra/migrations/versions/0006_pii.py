"""Personal data per document: `documents.documents.pii`, the matches per kind found in the
extracted text by services/common/pii.py (`{"rrn": 1, "mobile": 2}`), written with the tagging
result; `{}` when none were found, and for documents not tagged (yet, or before this
migration: they are not rescanned). Counts only, never the values.

A partial index serves `GET /api/v1/documents?pii=true` (newest first within a tenant); search
can filter on `pii <> '{}'::jsonb` the same way.

No new policy or grant: the column belongs to a table that already has row-level security;
doctag_upload may already update it and doctag_search read it (table-level grants).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE documents.documents ADD COLUMN pii jsonb NOT NULL DEFAULT '{}'::jsonb "
               "CHECK (jsonb_typeof(pii) = 'object')")
    op.execute("CREATE INDEX documents_tenant_pii_created ON documents.documents "
               "(tenant_id, created_at DESC, id DESC) WHERE pii <> '{}'::jsonb")


def downgrade() -> None:
    op.execute("DROP INDEX documents.documents_tenant_pii_created")
    op.execute("ALTER TABLE documents.documents DROP COLUMN pii")
