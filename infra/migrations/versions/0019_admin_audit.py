"""The gateway records the changes made through its admin API in the audit log.

Migrations 0007 and 0010 let `doctag_gateway` insert only `auth.login` and `access.denied`
rows; this widens that restrictive policy to the admin actions of services/common/audit.py
(users created, disabled or enabled, roles changed, passwords reset; API keys created and
revoked; tenants' daily API quotas changed). Still INSERT only (no SELECT, UPDATE or DELETE),
still only for the transaction's tenant, so an entry lands in the same transaction as the
change it records.

Revision ID: 0019_admin_audit
Revises: 0016_search_scale
Create Date: 2026-11-30
"""
from alembic import op

revision = "0019_admin_audit"
down_revision = "0018_tagging_queue"
branch_labels = None
depends_on = None

ADMIN_ACTIONS = ("admin.user_created", "admin.user_role_changed", "admin.user_disabled", "admin.user_enabled",
                 "admin.user_password_reset", "admin.api_key_created", "admin.api_key_revoked",
                 "admin.tenant_quota_changed")


def upgrade() -> None:
    allowed = ", ".join(f"'{a}'" for a in ("auth.login", "access.denied", *ADMIN_ACTIONS))
    op.execute(f"""
DROP POLICY gateway_only_logins_and_denials ON documents.audit_log;
CREATE POLICY gateway_only_logins_denials_and_admin ON documents.audit_log AS RESTRICTIVE FOR INSERT
  TO doctag_gateway WITH CHECK (action IN ({allowed}));
""")


def downgrade() -> None:
    op.execute("""
DROP POLICY gateway_only_logins_denials_and_admin ON documents.audit_log;
CREATE POLICY gateway_only_logins_and_denials ON documents.audit_log AS RESTRICTIVE FOR INSERT TO doctag_gateway
  WITH CHECK (action IN ('auth.login', 'access.denied'));
""")
