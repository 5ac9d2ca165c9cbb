"""The gateway records refused authorisations (its acl's 403s) in the audit log, next to logins.

Migration 0007 let `doctag_gateway` insert only `auth.login` rows; this widens that restrictive
policy to `access.denied` too. Still INSERT only, still only for the transaction's tenant.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
DROP POLICY gateway_only_logins ON documents.audit_log;
CREATE POLICY gateway_only_logins_and_denials ON documents.audit_log AS RESTRICTIVE FOR INSERT TO doctag_gateway
  WITH CHECK (action IN ('auth.login', 'access.denied'));
""")


def downgrade() -> None:
    op.execute("""
DROP POLICY gateway_only_logins_and_denials ON documents.audit_log;
CREATE POLICY gateway_only_logins ON documents.audit_log AS RESTRICTIVE FOR INSERT TO doctag_gateway
  WITH CHECK (action = 'auth.login');
""")
