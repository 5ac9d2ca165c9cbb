"""Soft delete of documents, and an append-only audit log readable by administrators.

Soft delete
- `documents.documents` gains `deleted_at` / `deleted_by`. The upload service hides deleted rows
  in its own queries (it must still see them to restore and purge them).
- Search must hide them without any change to its code, so the database does it: RESTRICTIVE
  policies for `doctag_search` (AND-ed with the permissive `tenant_isolation` policy every role
  shares, which therefore stays as it is) hide deleted documents and the tag rows of deleted
  documents. `deleted_at IS NULL` is an operator, not a function call, so the LEAKPROOF work of
  0002 still lets the planner use the full-text and trigram indexes.
- The purge job of every upload replica must find deleted documents past retention in every
  tenant, while `doctag_upload` is bound to one tenant per transaction by RLS. A SECURITY DEFINER
  function returns only (tenant id, document id) pairs of expired deletions, nothing else; the
  job then purges each document in that tenant's own RLS transaction. The function's owner (the
  migration role) must bypass RLS (a superuser, or BYPASSRLS): FORCE ROW LEVEL SECURITY applies
  to table owners. The migration warns otherwise (the purge job then finds nothing).

Audit log (the table exists since 0001)
- `actor_name` (username when known, `system` for the purge job) and `outcome`
  (success/denied/failed) are added; `tenant_id` may be NULL for a login attempt naming an unknown
  tenant (only platform administrators see those rows).
- Append-only for the services: UPDATE and DELETE are revoked from `doctag_upload` (0001 granted
  them on every table of the schema); `doctag_gateway` may only INSERT `auth.login` rows.
- Login events go into this same table rather than an `identity.login_audit`: administrators then
  read one trail through one endpoint (`GET /api/v1/audit`, served by upload, which cannot read
  the gateway's schema). The gateway's grant is narrow: INSERT only, no SELECT, only the action
  `auth.login` (a RESTRICTIVE policy), only for the tenant of its transaction.
- Platform administrators read every tenant's entries through a SELECT-only policy on this table
  alone, active when the transaction setting `app.audit_all_tenants` is `on`; upload sets it only
  after checking the caller's `platform_admin` role. It opens nothing else: documents, tags and
  quotas stay bound to `app.tenant_id`.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = r"""
------------------------------------------------------------------ soft delete
ALTER TABLE documents.documents ADD COLUMN deleted_at timestamptz, ADD COLUMN deleted_by uuid;
CREATE INDEX documents_deleted_at ON documents.documents (deleted_at) WHERE deleted_at IS NOT NULL;

CREATE POLICY search_hides_deleted ON documents.documents AS RESTRICTIVE FOR SELECT TO doctag_search
  USING (deleted_at IS NULL);
CREATE POLICY search_hides_deleted ON documents.document_tags AS RESTRICTIVE FOR SELECT TO doctag_search
  USING (EXISTS (SELECT 1 FROM documents.documents d
                 WHERE d.id = document_tags.document_id AND d.deleted_at IS NULL));

CREATE FUNCTION documents.expired_deletions(retention interval, max_rows integer)
RETURNS TABLE (tenant_id uuid, document_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
  SELECT d.tenant_id, d.id FROM documents.documents d
  WHERE d.deleted_at IS NOT NULL AND d.deleted_at < now() - retention
  ORDER BY d.deleted_at, d.id LIMIT max_rows
$f$;
REVOKE ALL ON FUNCTION documents.expired_deletions(interval, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION documents.expired_deletions(interval, integer) TO doctag_upload;

DO $$
BEGIN
  IF NOT (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user) THEN
    RAISE WARNING 'the migration role cannot bypass row-level security: documents.expired_deletions() '
                  'finds nothing and deleted documents are never purged automatically (see migration 0006)';
  END IF;
END $$;

------------------------------------------------------------------ audit log
ALTER TABLE documents.audit_log
  ALTER COLUMN tenant_id DROP NOT NULL,
  ADD COLUMN actor_name text,
  ADD COLUMN outcome text NOT NULL DEFAULT 'success' CHECK (outcome IN ('success', 'denied', 'failed'));
CREATE INDEX audit_log_at ON documents.audit_log (at DESC, id DESC);

REVOKE UPDATE, DELETE, TRUNCATE ON documents.audit_log FROM doctag_upload;

CREATE POLICY platform_admin_reads_all ON documents.audit_log FOR SELECT TO doctag_upload
  USING (current_setting('app.audit_all_tenants', true) = 'on');

GRANT USAGE ON SCHEMA documents TO doctag_gateway;
GRANT INSERT ON documents.audit_log TO doctag_gateway;
GRANT USAGE ON SEQUENCE documents.audit_log_id_seq TO doctag_gateway;
CREATE POLICY gateway_records_logins ON documents.audit_log FOR INSERT TO doctag_gateway
  WITH CHECK (tenant_id IS NOT DISTINCT FROM public.app_tenant_id());
CREATE POLICY gateway_only_logins ON documents.audit_log AS RESTRICTIVE FOR INSERT TO doctag_gateway
  WITH CHECK (action = 'auth.login');
"""

DOWNGRADE = r"""
DROP POLICY gateway_only_logins ON documents.audit_log;
DROP POLICY gateway_records_logins ON documents.audit_log;
REVOKE USAGE ON SEQUENCE documents.audit_log_id_seq FROM doctag_gateway;
REVOKE INSERT ON documents.audit_log FROM doctag_gateway;
REVOKE USAGE ON SCHEMA documents FROM doctag_gateway;
DROP POLICY platform_admin_reads_all ON documents.audit_log;
GRANT UPDATE, DELETE ON documents.audit_log TO doctag_upload;
DROP INDEX documents.audit_log_at;
DELETE FROM documents.audit_log WHERE tenant_id IS NULL;
ALTER TABLE documents.audit_log DROP COLUMN outcome, DROP COLUMN actor_name, ALTER COLUMN tenant_id SET NOT NULL;

DROP FUNCTION documents.expired_deletions(interval, integer);
DROP POLICY search_hides_deleted ON documents.document_tags;
DROP POLICY search_hides_deleted ON documents.documents;
DROP INDEX documents.documents_deleted_at;
ALTER TABLE documents.documents DROP COLUMN deleted_by, DROP COLUMN deleted_at;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
