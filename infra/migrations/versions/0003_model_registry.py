"""Model registry (schema `models`): models, immutable versions, aliases and their history;
the inference log keeps request ids and no longer a text length.

A registered version is an artifact directory in the model store whose manifest
(file SHA-256s, labels, metrics, training data) was verified before the row was
written; the trigger makes the row immutable, so "version 3" always means the same
bytes. Aliases (`production`, `candidate`, ...) are the only thing that moves;
every move is kept in alias_history with the previous target.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE models.models (
  name         text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
  description  text NOT NULL DEFAULT '',
  created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE models.versions (
  model_name       text NOT NULL REFERENCES models.models(name),
  version          integer NOT NULL CHECK (version > 0),
  -- Relative to the model store (DOCTAG_MODEL_STORE), e.g. 'doctag-tagger/3'.
  artifact_path    text NOT NULL CHECK (artifact_path !~ '(^/|\.\.)'),
  manifest         jsonb NOT NULL,
  manifest_sha256  char(64) NOT NULL CHECK (manifest_sha256 ~ '^[0-9a-f]{64}$'),
  metrics          jsonb NOT NULL DEFAULT '{}'::jsonb,
  training_data    jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at       timestamptz NOT NULL DEFAULT now(),
  created_by       text NOT NULL,
  PRIMARY KEY (model_name, version),
  UNIQUE (artifact_path)
);
CREATE INDEX versions_manifest_sha ON models.versions (model_name, manifest_sha256);

CREATE FUNCTION models.refuse_version_change() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  RAISE EXCEPTION 'model version %/% is immutable once registered', OLD.model_name, OLD.version
    USING ERRCODE = 'restrict_violation';
END
$f$;
CREATE TRIGGER versions_immutable BEFORE UPDATE OR DELETE ON models.versions
  FOR EACH ROW EXECUTE FUNCTION models.refuse_version_change();

CREATE TABLE models.aliases (
  model_name  text NOT NULL,
  alias       text NOT NULL CHECK (alias ~ '^[a-z][a-z0-9_-]{0,62}$'),
  version     integer NOT NULL,
  updated_at  timestamptz NOT NULL DEFAULT now(),
  updated_by  text NOT NULL,
  PRIMARY KEY (model_name, alias),
  FOREIGN KEY (model_name, version) REFERENCES models.versions (model_name, version)
);

CREATE TABLE models.alias_history (
  id                bigserial PRIMARY KEY,
  model_name        text NOT NULL,
  alias             text NOT NULL,
  previous_version  integer,
  new_version       integer NOT NULL,
  changed_at        timestamptz NOT NULL DEFAULT now(),
  changed_by        text NOT NULL
);
CREATE INDEX alias_history_model ON models.alias_history (model_name, alias, id DESC);

-- One row per predicted text: never the text, only its SHA-256.
ALTER TABLE models.inference_log DROP COLUMN input_chars;
ALTER TABLE models.inference_log ADD COLUMN request_id text;

GRANT SELECT, INSERT ON models.versions, models.alias_history TO doctag_model;
-- UPDATE on models also lets registrations lock the model's row (SELECT ... FOR UPDATE).
GRANT SELECT, INSERT, UPDATE ON models.models, models.aliases TO doctag_model;
GRANT SELECT, INSERT, DELETE ON models.inference_log TO doctag_model;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA models TO doctag_model;
"""

DOWNGRADE = r"""
ALTER TABLE models.inference_log DROP COLUMN request_id;
ALTER TABLE models.inference_log ADD COLUMN input_chars integer NOT NULL DEFAULT 0;
DROP TABLE models.alias_history;
DROP TABLE models.aliases;
DROP TABLE models.versions;
DROP FUNCTION models.refuse_version_change();
DROP TABLE models.models;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
