"""The tagging queue screen: platform administrators read every tenant's documents' processing
state, and the documents list sorts on the server.

- A SELECT-only policy on `documents.documents` for `doctag_upload`, active when the
  transaction setting `app.queue_all_tenants` is `on`; upload sets it only after checking the
  caller's `platform_admin` role, for `GET /api/v1/tagging/queue` (counts, rate, failed
  documents across tenants). As with `app.audit_all_tenants` (0007) it opens nothing else: no
  writes, no tags, text or outbox of another tenant. A retry still runs in the document's own
  tenant transaction.
- `documents_processed_at`: the tagging rate (documents finished in the last hour) and the
  latest failures without reading a tenant's whole history.
- `documents_tenant_title` / `documents_tenant_size`: keyset pages of the documents list ordered
  by title (case-insensitive) or size, like `documents_tenant_created` serves the default order.

Revision ID: 0018_tagging_queue
Revises: 0016_search_scale
Create Date: 2026-11-30
"""
from alembic import op

revision = "0018_tagging_queue"
down_revision = "0016_search_scale"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE POLICY platform_admin_reads_queue ON documents.documents FOR SELECT TO doctag_upload
  USING (current_setting('app.queue_all_tenants', true) = 'on');
CREATE INDEX documents_processed_at ON documents.documents (processed_at DESC, status)
  WHERE processed_at IS NOT NULL;
CREATE INDEX documents_tenant_title ON documents.documents (tenant_id, lower(title), id);
CREATE INDEX documents_tenant_size ON documents.documents (tenant_id, size_bytes DESC, id DESC);
"""

DOWNGRADE = r"""
DROP INDEX documents.documents_tenant_size;
DROP INDEX documents.documents_tenant_title;
DROP INDEX documents.documents_processed_at;
DROP POLICY platform_admin_reads_queue ON documents.documents;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
