"""Initial schemas: identity (gateway), documents (upload), models (model-serving).

Row-level security on every tenant-scoped table, keyed on the transaction setting
`app.tenant_id`; FORCE so even the table owner obeys it. Services log in as roles
that own nothing and cannot bypass RLS.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- Roles are cluster-wide: create them once, grant per database.
DO $$
DECLARE r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['doctag_gateway','doctag_upload','doctag_search','doctag_relay','doctag_model'] LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
      EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE', r);
    END IF;
  END LOOP;
END $$;

CREATE SCHEMA identity;
CREATE SCHEMA documents;
CREATE SCHEMA models;

-- The tenant of the current transaction, or NULL when none was set.
CREATE FUNCTION public.app_tenant_id() RETURNS uuid LANGUAGE sql STABLE AS $f$
  SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid
$f$;

------------------------------------------------------------------ identity
CREATE TABLE identity.tenants (
  id          uuid PRIMARY KEY,
  slug        text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
  name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE identity.users (
  id             uuid PRIMARY KEY,
  tenant_id      uuid NOT NULL REFERENCES identity.tenants(id) ON DELETE CASCADE,
  username       text NOT NULL CHECK (username ~ '^[A-Za-z0-9._@-]{1,64}$'),
  password_hash  text NOT NULL,
  roles          text[] NOT NULL CHECK (roles <@ ARRAY['user','tenant_admin','platform_admin']::text[] AND cardinality(roles) > 0),
  disabled       boolean NOT NULL DEFAULT false,
  created_at     timestamptz NOT NULL DEFAULT now(),
  updated_at     timestamptz NOT NULL DEFAULT now(),
  UNIQUE (tenant_id, username)
);
ALTER TABLE identity.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE identity.users FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON identity.users
  USING (tenant_id = public.app_tenant_id()) WITH CHECK (tenant_id = public.app_tenant_id());

------------------------------------------------------------------ documents
CREATE TABLE documents.quotas (
  tenant_id    uuid PRIMARY KEY,
  quota_bytes  bigint NOT NULL CHECK (quota_bytes >= 0),
  used_bytes   bigint NOT NULL DEFAULT 0 CHECK (used_bytes >= 0),
  updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE documents.documents (
  id                uuid PRIMARY KEY,
  tenant_id         uuid NOT NULL,
  title             text NOT NULL,
  filename          text NOT NULL,
  content_type      text NOT NULL,
  size_bytes        bigint NOT NULL CHECK (size_bytes >= 0),
  sha256            char(64) NOT NULL,
  status            text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued','processing','tagged','failed')),
  error             text,
  text_content      text,
  -- Korean morphemes of title + text (kiwipiepy), indexed as 'simple' tsvector.
  search_terms      text,
  search_vector     tsvector GENERATED ALWAYS AS (to_tsvector('simple', coalesce(search_terms, ''))) STORED,
  created_by        uuid,
  created_at        timestamptz NOT NULL DEFAULT now(),
  updated_at        timestamptz NOT NULL DEFAULT now(),
  processed_at      timestamptz
);
CREATE INDEX documents_tenant_created ON documents.documents (tenant_id, created_at DESC, id DESC);
CREATE INDEX documents_tenant_status ON documents.documents (tenant_id, status);
CREATE INDEX documents_tenant_sha ON documents.documents (tenant_id, sha256);
CREATE INDEX documents_search_vector ON documents.documents USING gin (search_vector);
CREATE INDEX documents_title_trgm ON documents.documents USING gin (title gin_trgm_ops);
CREATE INDEX documents_text_trgm ON documents.documents USING gin (text_content gin_trgm_ops);

CREATE TABLE documents.document_tags (
  tenant_id      uuid NOT NULL,
  document_id    uuid NOT NULL REFERENCES documents.documents(id) ON DELETE CASCADE,
  tag            text NOT NULL,
  score          real NOT NULL CHECK (score >= 0 AND score <= 1),
  source         text NOT NULL DEFAULT 'model',
  model_name     text,
  model_version  text,
  created_at     timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (document_id, source, tag)
);
CREATE INDEX document_tags_tenant_tag ON documents.document_tags (tenant_id, tag);

-- Transactional outbox: written with the document, published by the relay.
CREATE TABLE documents.outbox (
  id           bigserial PRIMARY KEY,
  tenant_id    uuid NOT NULL,
  event_type   text NOT NULL,
  message_id   text NOT NULL,
  payload      jsonb NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now(),
  attempts     integer NOT NULL DEFAULT 0,
  last_error   text,
  sent_at      timestamptz
);
CREATE INDEX outbox_unsent ON documents.outbox (id) WHERE sent_at IS NULL;

CREATE TABLE documents.audit_log (
  id           bigserial PRIMARY KEY,
  tenant_id    uuid NOT NULL,
  document_id  uuid,
  actor_id     uuid,
  action       text NOT NULL,
  request_id   text,
  details      jsonb NOT NULL DEFAULT '{}'::jsonb,
  at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_tenant_at ON documents.audit_log (tenant_id, at DESC);

DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['quotas','documents','document_tags','outbox','audit_log'] LOOP
    EXECUTE format('ALTER TABLE documents.%I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE documents.%I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format('CREATE POLICY tenant_isolation ON documents.%I USING (tenant_id = public.app_tenant_id()) WITH CHECK (tenant_id = public.app_tenant_id())', t);
  END LOOP;
END $$;
-- The outbox relay publishes every tenant's events; it may read and mark outbox rows, nothing else.
CREATE POLICY relay_publishes_all ON documents.outbox TO doctag_relay USING (true) WITH CHECK (true);

------------------------------------------------------------------ models
CREATE TABLE models.inference_log (
  id            bigserial PRIMARY KEY,
  at            timestamptz NOT NULL DEFAULT now(),
  tenant_id     uuid,
  model_name    text NOT NULL,
  model_version text NOT NULL,
  latency_ms    real NOT NULL,
  input_sha256  char(64) NOT NULL,
  input_chars   integer NOT NULL,
  tags          jsonb NOT NULL
);
CREATE INDEX inference_log_at ON models.inference_log (at);

------------------------------------------------------------------ grants
GRANT USAGE ON SCHEMA identity TO doctag_gateway;
GRANT SELECT ON identity.tenants TO doctag_gateway;
GRANT SELECT, UPDATE ON identity.users TO doctag_gateway;

GRANT USAGE ON SCHEMA documents TO doctag_upload, doctag_search, doctag_relay;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA documents TO doctag_upload;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA documents TO doctag_upload;
GRANT SELECT ON documents.documents, documents.document_tags TO doctag_search;
GRANT SELECT, UPDATE ON documents.outbox TO doctag_relay;

GRANT USAGE ON SCHEMA models TO doctag_model;
GRANT SELECT, INSERT, DELETE ON ALL TABLES IN SCHEMA models TO doctag_model;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA models TO doctag_model;
GRANT EXECUTE ON FUNCTION public.app_tenant_id() TO PUBLIC;
"""

DOWNGRADE = r"""
DROP SCHEMA models CASCADE;
DROP SCHEMA documents CASCADE;
DROP SCHEMA identity CASCADE;
DROP FUNCTION public.app_tenant_id();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
