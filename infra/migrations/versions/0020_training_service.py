"""Training as a service (schema `models`, owned by model-serving): datasets with immutable,
content-addressed versions that passed a quality gate, training jobs with heartbeats, and the
training worker's own least-privilege role.

- `models.datasets`: a named dataset of a task (`headlines`, `petitions`, ...). `tenant_id` NULL
  is a shared dataset (platform admins); otherwise the tenant's own. Soft delete (`deleted_at`),
  kept 90 days like documents.
- `models.dataset_versions`: one gated upload (or a `source: user` snapshot of the tenant's own
  corrected tags). `content_sha256` is the SHA-256 of the stored (masked, kept) rows, so the same
  content is the same version. Its rows, statistics and gate report never change (trigger); only
  the review decision (`status`, `decided_*`) moves: pending → approved | rejected. A version the
  gate blocked is `blocked` and cannot be approved.
- `models.dataset_rows`: the rows that passed the gate, with personal data already masked by
  services/common/pii.mask_pii. Raw uploaded text is never stored.
- `models.version_evaluations`: per-label metrics and the confusion matrix of a registered version
  on a task's fixed evaluation set (named by its SHA-256).
- `models.training_jobs` / `models.training_job_logs`: state, progress, heartbeat, attempts,
  the reason of a failure, the resulting model version and its evaluation.
- `documents.training_feedback()`: upload's read-only interface for the feedback path: the
  calling tenant's live, tagged documents with the tags people added themselves (source `user`),
  SECURITY DEFINER and limited to `app.tenant_id`, the only thing of `documents` that
  `doctag_model` may read.
- `doctag_model` may append `dataset.*`, `training.*` and `model.*` entries to the audit log.
- Row-level security: datasets and their versions and rows are visible to their tenant, shared
  ones to everyone; jobs to their tenant. The training worker (`doctag_training`) and
  model-serving's job finisher work across tenants: the worker through policies of its own role,
  model-serving only inside transactions that set `app.system = 'on'`.

Revision ID: 0020_training_service
Revises: 0019_admin_audit
Create Date: 2026-11-30
"""
from alembic import op

revision = "0020_training_service"
down_revision = "0019_admin_audit"
branch_labels = None
depends_on = None

UPGRADE = r"""
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'doctag_training') THEN
    CREATE ROLE doctag_training LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
  END IF;
END $$;

CREATE FUNCTION models.visible(row_tenant uuid) RETURNS boolean LANGUAGE sql STABLE AS $f$
  SELECT row_tenant IS NOT DISTINCT FROM public.app_tenant_id() OR row_tenant IS NULL
         OR coalesce(current_setting('app.system', true), '') = 'on'
$f$;

CREATE TABLE models.datasets (
  id               uuid PRIMARY KEY,
  tenant_id        uuid,
  name             text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
  task             text NOT NULL CHECK (task ~ '^[a-z][a-z0-9_-]{0,40}$'),
  created_by       uuid,
  created_by_name  text,
  created_at       timestamptz NOT NULL DEFAULT now(),
  deleted_at       timestamptz
);
CREATE INDEX datasets_tenant ON models.datasets (tenant_id, created_at DESC);

CREATE TABLE models.dataset_versions (
  id               uuid PRIMARY KEY,
  dataset_id       uuid NOT NULL REFERENCES models.datasets(id) ON DELETE CASCADE,
  tenant_id        uuid,
  version          integer NOT NULL CHECK (version > 0),
  content_sha256   char(64) NOT NULL CHECK (content_sha256 ~ '^[0-9a-f]{64}$'),
  source           text NOT NULL CHECK (source IN ('upload', 'user')),
  format           text NOT NULL,
  rows             integer NOT NULL,
  stats            jsonb NOT NULL,
  report           jsonb NOT NULL,
  status           text NOT NULL CHECK (status IN ('pending', 'approved', 'rejected', 'blocked')),
  decided_by       uuid,
  decided_by_name  text,
  decided_at       timestamptz,
  decision_note    text,
  created_by       uuid,
  created_by_name  text,
  created_at       timestamptz NOT NULL DEFAULT now(),
  UNIQUE (dataset_id, version),
  UNIQUE (dataset_id, content_sha256)
);

CREATE FUNCTION models.refuse_dataset_content_change() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  IF TG_OP = 'DELETE' THEN
    RETURN OLD;   -- only the purge of a deleted dataset (cascade) removes versions
  END IF;
  IF (NEW.content_sha256, NEW.rows, NEW.stats, NEW.report, NEW.source, NEW.dataset_id, NEW.version)
     IS DISTINCT FROM (OLD.content_sha256, OLD.rows, OLD.stats, OLD.report, OLD.source, OLD.dataset_id, OLD.version)
     OR OLD.status <> 'pending' THEN
    RAISE EXCEPTION 'dataset version % is immutable (only a pending version is approved or rejected)', OLD.id
      USING ERRCODE = 'restrict_violation';
  END IF;
  RETURN NEW;
END
$f$;
CREATE TRIGGER dataset_versions_immutable BEFORE UPDATE ON models.dataset_versions
  FOR EACH ROW EXECUTE FUNCTION models.refuse_dataset_content_change();

CREATE TABLE models.dataset_rows (
  version_id   uuid NOT NULL REFERENCES models.dataset_versions(id) ON DELETE CASCADE,
  tenant_id    uuid,
  row_no       integer NOT NULL,
  title        text,
  text         text NOT NULL,
  label        text NOT NULL,
  PRIMARY KEY (version_id, row_no)
);
CREATE FUNCTION models.refuse_row_change() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  RAISE EXCEPTION 'dataset rows are immutable' USING ERRCODE = 'restrict_violation';
END
$f$;
CREATE TRIGGER dataset_rows_immutable BEFORE UPDATE ON models.dataset_rows
  FOR EACH ROW EXECUTE FUNCTION models.refuse_row_change();

CREATE TABLE models.training_jobs (
  id                 uuid PRIMARY KEY,
  tenant_id          uuid NOT NULL,
  created_by         uuid,
  created_by_name    text,
  model_name         text NOT NULL,
  dataset_versions   uuid[] NOT NULL,
  priority           text NOT NULL CHECK (priority IN ('urgent', 'routine')),
  state              text NOT NULL DEFAULT 'PENDING' CHECK (state IN
                       ('PENDING', 'VALIDATING', 'TRAINING', 'EVALUATING', 'READY', 'FAILED', 'CANCELLED')),
  reason             text,
  seed               integer NOT NULL,
  hyperparameters    jsonb NOT NULL,
  code_version       text,              -- set by the worker: the training code that ran
  timeout_s          integer NOT NULL CHECK (timeout_s > 0),
  attempts           integer NOT NULL DEFAULT 0,
  max_attempts       integer NOT NULL CHECK (max_attempts > 0),
  cancel_requested   boolean NOT NULL DEFAULT false,
  worker_id          text,
  progress           jsonb NOT NULL DEFAULT '{}'::jsonb,
  heartbeat_at       timestamptz,
  published_at       timestamptz,
  artifact_dir       text,
  result_version     integer,
  evaluation         jsonb,
  created_at         timestamptz NOT NULL DEFAULT now(),
  started_at         timestamptz,
  finished_at        timestamptz
);
CREATE INDEX training_jobs_tenant ON models.training_jobs (tenant_id, created_at DESC);
CREATE INDEX training_jobs_active ON models.training_jobs (state) WHERE state NOT IN ('READY', 'FAILED', 'CANCELLED');

-- Every evaluation of a registered version on a task's fixed evaluation set (per-label metrics and
-- confusion matrix), the registry's record the promotion policy compares.
CREATE TABLE models.version_evaluations (
  model_name     text NOT NULL,
  version        integer NOT NULL,
  task           text NOT NULL,
  eval_sha256    char(64) NOT NULL,
  metrics        jsonb NOT NULL,
  confusion      jsonb NOT NULL,
  evaluated_at   timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (model_name, version, task, eval_sha256),
  FOREIGN KEY (model_name, version) REFERENCES models.versions (model_name, version)
);
GRANT SELECT, INSERT ON models.version_evaluations TO doctag_model;

CREATE TABLE models.training_job_logs (
  id         bigserial PRIMARY KEY,
  job_id     uuid NOT NULL REFERENCES models.training_jobs(id) ON DELETE CASCADE,
  tenant_id  uuid NOT NULL,
  at         timestamptz NOT NULL DEFAULT now(),
  message    text NOT NULL
);
CREATE INDEX training_job_logs_job ON models.training_job_logs (job_id, id);

DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['datasets', 'dataset_versions', 'dataset_rows', 'training_jobs', 'training_job_logs'] LOOP
    EXECUTE format('ALTER TABLE models.%I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE models.%I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format('CREATE POLICY worker_all ON models.%I TO doctag_training USING (true) WITH CHECK (true)', t);
  END LOOP;
END $$;
CREATE POLICY tenant_or_shared ON models.datasets TO doctag_model
  USING (models.visible(tenant_id)) WITH CHECK (models.visible(tenant_id));
CREATE POLICY tenant_or_shared ON models.dataset_versions TO doctag_model
  USING (models.visible(tenant_id)) WITH CHECK (models.visible(tenant_id));
CREATE POLICY tenant_or_shared ON models.dataset_rows TO doctag_model
  USING (models.visible(tenant_id)) WITH CHECK (models.visible(tenant_id));
-- A job is its tenant's alone (never shared): NULL is not visible without app.system.
CREATE POLICY own_tenant ON models.training_jobs TO doctag_model
  USING (tenant_id = public.app_tenant_id() OR coalesce(current_setting('app.system', true), '') = 'on')
  WITH CHECK (tenant_id = public.app_tenant_id() OR coalesce(current_setting('app.system', true), '') = 'on');
CREATE POLICY own_tenant ON models.training_job_logs TO doctag_model
  USING (tenant_id = public.app_tenant_id() OR coalesce(current_setting('app.system', true), '') = 'on')
  WITH CHECK (tenant_id = public.app_tenant_id() OR coalesce(current_setting('app.system', true), '') = 'on');

GRANT SELECT, INSERT, UPDATE, DELETE ON models.datasets, models.dataset_versions, models.dataset_rows TO doctag_model;
GRANT SELECT, INSERT, UPDATE ON models.training_jobs TO doctag_model;
GRANT SELECT, INSERT ON models.training_job_logs TO doctag_model;
GRANT USAGE ON SEQUENCE models.training_job_logs_id_seq TO doctag_model;

GRANT USAGE ON SCHEMA models TO doctag_training;
GRANT SELECT ON models.datasets, models.dataset_versions, models.dataset_rows TO doctag_training;
GRANT SELECT, UPDATE ON models.training_jobs TO doctag_training;
GRANT SELECT, INSERT ON models.training_job_logs TO doctag_training;
GRANT USAGE ON SEQUENCE models.training_job_logs_id_seq TO doctag_training;

-- The feedback path: what people said a document is about, for the calling tenant only.
CREATE FUNCTION documents.training_feedback(max_rows integer)
RETURNS TABLE (document_id uuid, title text, text_content text, tag text, tagged_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
  SELECT d.id, d.title, d.text_content, t.tag, t.created_at
  FROM documents.document_tags t JOIN documents.documents d ON d.id = t.document_id
  WHERE t.tenant_id = public.app_tenant_id() AND d.tenant_id = public.app_tenant_id()
    AND t.source = 'user' AND d.status = 'tagged' AND d.deleted_at IS NULL
    AND d.text_content IS NOT NULL
  ORDER BY t.created_at, d.id, t.tag LIMIT max_rows
$f$;
REVOKE ALL ON FUNCTION documents.training_feedback(integer) FROM PUBLIC;
GRANT USAGE ON SCHEMA documents TO doctag_model;
GRANT EXECUTE ON FUNCTION documents.training_feedback(integer) TO doctag_model;

-- model-serving records dataset, training and promotion decisions in the platform's audit log.
GRANT INSERT ON documents.audit_log TO doctag_model;
GRANT USAGE ON SEQUENCE documents.audit_log_id_seq TO doctag_model;
CREATE POLICY model_records_training ON documents.audit_log FOR INSERT TO doctag_model
  WITH CHECK (tenant_id IS NOT DISTINCT FROM public.app_tenant_id());
CREATE POLICY model_only_training ON documents.audit_log AS RESTRICTIVE FOR INSERT TO doctag_model
  WITH CHECK (action LIKE 'dataset.%' OR action LIKE 'training.%' OR action LIKE 'model.%');
"""

DOWNGRADE = r"""
DROP POLICY model_only_training ON documents.audit_log;
DROP POLICY model_records_training ON documents.audit_log;
REVOKE USAGE ON SEQUENCE documents.audit_log_id_seq FROM doctag_model;
REVOKE INSERT ON documents.audit_log FROM doctag_model;
REVOKE EXECUTE ON FUNCTION documents.training_feedback(integer) FROM doctag_model;
REVOKE USAGE ON SCHEMA documents FROM doctag_model;
DROP FUNCTION documents.training_feedback(integer);
DROP TABLE models.training_job_logs;
DROP TABLE models.version_evaluations;
DROP TABLE models.training_jobs;
DROP TABLE models.dataset_rows;
DROP TABLE models.dataset_versions;
DROP TABLE models.datasets;
DROP FUNCTION models.refuse_row_change();
DROP FUNCTION models.refuse_dataset_content_change();
DROP FUNCTION models.visible(uuid);
REVOKE ALL ON SCHEMA models FROM doctag_training;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
