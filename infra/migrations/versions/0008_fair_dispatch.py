"""Fair dispatch of tagging jobs between tenants (the outbox relay's scheduler).

- `documents.outbox.document_id`: the document of a `document.uploaded` row, so its job can be
  found when the document is finished.
- `documents.outbox.finished_at`: when the job's document reached `tagged` or `failed` (or was
  deleted). A job row that is sent and not finished is "in flight"; the relay publishes at most
  N in-flight jobs per tenant (services/upload/relay.py states the bound).
- Triggers on `documents.documents` set `finished_at`, in the transaction that finishes or
  deletes the document, whatever code path does it (RecordTaggingResult, delete), so the
  in-flight count cannot drift from the documents' real state.
- `documents.dispatch_tenants`: one row per tenant that has had tagging jobs, owned by the relay.
  Its row lock is what lets two relays schedule safely (only the relay holding a tenant's row
  publishes that tenant's jobs); `last_dispatch_at` orders tenants round-robin.

Revision ID: 0008
Revises: 0007

A soft-deleted document (0007) keeps its job: the worker still tags it (so that a restore brings it
back whole), and that status change finishes the job; a purge's DELETE finishes it too.
Create Date: 2026-11-25
"""
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE documents.outbox ADD COLUMN document_id uuid, ADD COLUMN finished_at timestamptz;
UPDATE documents.outbox SET document_id = (payload->>'document_id')::uuid
  WHERE event_type = 'document.uploaded';
-- Jobs whose documents are already final (or gone) are not in flight.
UPDATE documents.outbox o SET finished_at = now()
  WHERE o.event_type = 'document.uploaded' AND NOT EXISTS (
    SELECT 1 FROM documents.documents d WHERE d.id = o.document_id AND d.status NOT IN ('tagged', 'failed'));

-- Waiting jobs of one tenant, oldest first; other waiting events; in-flight jobs of one tenant.
CREATE INDEX outbox_waiting_by_tenant ON documents.outbox (tenant_id, id) WHERE sent_at IS NULL;
CREATE INDEX outbox_waiting_events ON documents.outbox (id)
  WHERE sent_at IS NULL AND event_type <> 'document.uploaded';
CREATE INDEX outbox_in_flight ON documents.outbox (tenant_id, sent_at)
  WHERE sent_at IS NOT NULL AND finished_at IS NULL AND event_type = 'document.uploaded';
CREATE INDEX outbox_unfinished_document ON documents.outbox (document_id) WHERE finished_at IS NULL;

CREATE FUNCTION documents.finish_dispatched_job() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  -- Runs as the caller (doctag_upload) inside its tenant transaction: RLS scopes it to the tenant.
  UPDATE documents.outbox SET finished_at = now() WHERE document_id = OLD.id AND finished_at IS NULL;
  RETURN NULL;
END
$f$;
CREATE TRIGGER documents_finish_job AFTER UPDATE OF status ON documents.documents FOR EACH ROW
  WHEN (NEW.status IN ('tagged', 'failed') AND OLD.status IS DISTINCT FROM NEW.status)
  EXECUTE FUNCTION documents.finish_dispatched_job();
CREATE TRIGGER documents_finish_job_on_delete AFTER DELETE ON documents.documents FOR EACH ROW
  EXECUTE FUNCTION documents.finish_dispatched_job();

CREATE TABLE documents.dispatch_tenants (
  tenant_id         uuid PRIMARY KEY,
  last_dispatch_at  timestamptz
);
ALTER TABLE documents.dispatch_tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE documents.dispatch_tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON documents.dispatch_tenants
  USING (tenant_id = public.app_tenant_id()) WITH CHECK (tenant_id = public.app_tenant_id());
CREATE POLICY relay_schedules_all ON documents.dispatch_tenants TO doctag_relay USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE ON documents.dispatch_tenants TO doctag_relay;
"""

DOWNGRADE = r"""
DROP TABLE documents.dispatch_tenants;
DROP TRIGGER documents_finish_job_on_delete ON documents.documents;
DROP TRIGGER documents_finish_job ON documents.documents;
DROP FUNCTION documents.finish_dispatched_job();
DROP INDEX documents.outbox_unfinished_document;
DROP INDEX documents.outbox_in_flight;
DROP INDEX documents.outbox_waiting_events;
DROP INDEX documents.outbox_waiting_by_tenant;
ALTER TABLE documents.outbox DROP COLUMN finished_at, DROP COLUMN document_id;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
