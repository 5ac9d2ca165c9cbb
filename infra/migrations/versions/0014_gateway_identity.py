"""The gateway's identity additions: daily API quotas per tenant and revocable tokens.

- `identity.tenants.api_daily_quota`: calls a day the tenant may make through the gateway
  (NULL: the platform default, DOCTAG_API_DAILY_QUOTA_DEFAULT).
- `identity.api_usage`: calls per tenant and day (the day of DOCTAG_API_QUOTA_TIMEZONE),
  counted by the gateway in one statement per call, so the count is exact across gateway
  processes and restarts; `warned_at` marks the once-a-day crossing of the warning threshold.
  Row-level security by tenant, like the other tenant tables. Upload reads it for
  GET /api/v1/quota (API usage next to storage).
- The gateway may INSERT `quota.warning` rows into `documents.outbox` for its tenant (the
  upload relay publishes them with confirms), so the warning is published exactly when the
  crossing commits.
- `identity.users.token_generation`: raised when a user's password, roles or disabled flag
  change (roles and disabled by a trigger, so no path can forget it; the password by whoever
  sets it, since a transparent rehash must not log anyone out); tokens carry the generation
  they were issued with and the gateway refuses older ones.
- The role `analyst`: read-only access across tenants to the audit data.
- `identity.api_keys`: per-tenant API keys for machine clients (`key-auth`), stored as the
  SHA-256 of the key (the key itself is shown once, at creation). The gateway looks a key
  up before it knows the tenant, so it may read every tenant's keys; it writes only its
  transaction's tenant's.

Revision ID: 0014_gateway_identity
Revises: 0012_search_embeddings
Create Date: 2026-11-30
"""
from alembic import op

revision = "0014_gateway_identity"
down_revision = "0012_search_embeddings"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE identity.tenants ADD COLUMN api_daily_quota integer
  CHECK (api_daily_quota IS NULL OR api_daily_quota >= 0);

CREATE TABLE identity.api_usage (
  tenant_id  uuid NOT NULL REFERENCES identity.tenants(id) ON DELETE CASCADE,
  day        date NOT NULL,
  calls      bigint NOT NULL DEFAULT 0 CHECK (calls >= 0),
  warned_at  timestamptz,
  PRIMARY KEY (tenant_id, day)
);
ALTER TABLE identity.api_usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE identity.api_usage FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON identity.api_usage
  USING (tenant_id = public.app_tenant_id()) WITH CHECK (tenant_id = public.app_tenant_id());
GRANT SELECT, INSERT, UPDATE ON identity.api_usage TO doctag_gateway;
-- Platform administrators list every tenant's usage through the gateway.
CREATE POLICY gateway_reads_all_usage ON identity.api_usage FOR SELECT TO doctag_gateway USING (true);

GRANT USAGE ON SCHEMA identity TO doctag_upload;
GRANT SELECT ON identity.api_usage TO doctag_upload;
GRANT SELECT (id, api_daily_quota) ON identity.tenants TO doctag_upload;

GRANT INSERT ON documents.outbox TO doctag_gateway;
GRANT USAGE ON SEQUENCE documents.outbox_id_seq TO doctag_gateway;
CREATE POLICY gateway_only_quota_warnings ON documents.outbox AS RESTRICTIVE FOR INSERT TO doctag_gateway
  WITH CHECK (event_type = 'quota.warning');

ALTER TABLE identity.users ADD COLUMN token_generation integer NOT NULL DEFAULT 0;
CREATE FUNCTION identity.bump_token_generation() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  IF NEW.roles IS DISTINCT FROM OLD.roles OR NEW.disabled IS DISTINCT FROM OLD.disabled THEN
    NEW.token_generation := OLD.token_generation + 1;
  END IF;
  RETURN NEW;
END $f$;
CREATE TRIGGER users_token_generation BEFORE UPDATE ON identity.users
  FOR EACH ROW EXECUTE FUNCTION identity.bump_token_generation();

ALTER TABLE identity.users DROP CONSTRAINT users_roles_check;
ALTER TABLE identity.users ADD CONSTRAINT users_roles_check CHECK (
  roles <@ ARRAY['user','tenant_admin','platform_admin','analyst']::text[] AND cardinality(roles) > 0);

CREATE TABLE identity.api_keys (
  id          uuid PRIMARY KEY,
  tenant_id   uuid NOT NULL REFERENCES identity.tenants(id) ON DELETE CASCADE,
  name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
  key_hash    char(64) NOT NULL UNIQUE,
  roles       text[] NOT NULL CHECK (roles <@ ARRAY['user','tenant_admin']::text[] AND cardinality(roles) > 0),
  created_by  uuid,
  created_at  timestamptz NOT NULL DEFAULT now(),
  revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant ON identity.api_keys (tenant_id, created_at);
ALTER TABLE identity.api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE identity.api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON identity.api_keys
  USING (tenant_id = public.app_tenant_id()) WITH CHECK (tenant_id = public.app_tenant_id());
CREATE POLICY gateway_finds_keys ON identity.api_keys FOR SELECT TO doctag_gateway USING (true);
GRANT SELECT, INSERT, UPDATE ON identity.api_keys TO doctag_gateway;
GRANT INSERT, UPDATE ON identity.users TO doctag_gateway;
GRANT UPDATE (api_daily_quota, name) ON identity.tenants TO doctag_gateway;
"""

DOWNGRADE = r"""
REVOKE UPDATE (api_daily_quota, name) ON identity.tenants FROM doctag_gateway;
REVOKE INSERT ON identity.users FROM doctag_gateway;
DROP TABLE identity.api_keys;
ALTER TABLE identity.users DROP CONSTRAINT users_roles_check;
ALTER TABLE identity.users ADD CONSTRAINT users_roles_check CHECK (
  roles <@ ARRAY['user','tenant_admin','platform_admin']::text[] AND cardinality(roles) > 0);
DROP TRIGGER users_token_generation ON identity.users;
DROP FUNCTION identity.bump_token_generation();
ALTER TABLE identity.users DROP COLUMN token_generation;
DROP POLICY gateway_only_quota_warnings ON documents.outbox;
REVOKE USAGE ON SEQUENCE documents.outbox_id_seq FROM doctag_gateway;
REVOKE INSERT ON documents.outbox FROM doctag_gateway;
REVOKE SELECT (id, api_daily_quota) ON identity.tenants FROM doctag_upload;
REVOKE SELECT ON identity.api_usage FROM doctag_upload;
REVOKE USAGE ON SCHEMA identity FROM doctag_upload;
DROP TABLE identity.api_usage;
ALTER TABLE identity.tenants DROP COLUMN api_daily_quota;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
