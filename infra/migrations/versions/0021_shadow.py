"""Shadow mode for a model's `candidate`, and removed model tags as a negative training signal.

- `models.shadow_settings`: per model, whether its `candidate` scores a share of live predictions in
  the background (`share` NULL: DOCTAG_SHADOW_SHARE), who changed it and when.
- `models.shadow_comparisons`: one row per live text the candidate scored beside production: the
  tenant, both versions, the SHA-256 of the input (never the text), each side's top label, whether
  they agree, and the candidate's latency. Kept as long as the inference log (30 days).
- `models.shadow_drops`: samples chosen for shadow scoring that were dropped because the shadow
  queue was full, counted per tenant and version pair (one row per flush).
- `models.dataset_rows.negative`: a row saying the text is NOT `label` (a model tag a person removed);
  existing rows are positive.
- `documents.training_feedback(max_rows)` now also returns the calling tenant's rejected model tags
  (`documents.tag_rejections`) with `negative = true`, still SECURITY DEFINER and limited to
  `app.tenant_id`.
- `doctag_training` reads the new column like the others (no new grant needed).

Revision ID: 0021_shadow
Revises: 0020_training_service
Create Date: 2026-11-30
"""
from alembic import op

revision = "0021_shadow"
down_revision = "0020_training_service"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE models.shadow_settings (
  model_name   text PRIMARY KEY REFERENCES models.models(name),
  enabled      boolean NOT NULL,
  share        double precision CHECK (share > 0 AND share <= 1),
  enabled_at   timestamptz,
  updated_by   text NOT NULL,
  updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE models.shadow_comparisons (
  id                   bigserial PRIMARY KEY,
  at                   timestamptz NOT NULL DEFAULT now(),
  tenant_id            uuid,
  model_name           text NOT NULL,
  production_version   text NOT NULL,
  candidate_version    text NOT NULL,
  input_sha256         char(64) NOT NULL,
  production_label     text NOT NULL,
  candidate_label      text NOT NULL,
  agree                boolean NOT NULL,
  candidate_latency_ms real NOT NULL
);
CREATE INDEX shadow_comparisons_model ON models.shadow_comparisons (model_name, candidate_version, at);
CREATE INDEX shadow_comparisons_at ON models.shadow_comparisons (at);

CREATE TABLE models.shadow_drops (
  id                   bigserial PRIMARY KEY,
  at                   timestamptz NOT NULL DEFAULT now(),
  tenant_id            uuid,
  model_name           text NOT NULL,
  production_version   text NOT NULL,
  candidate_version    text NOT NULL,
  dropped              integer NOT NULL CHECK (dropped > 0)
);
CREATE INDEX shadow_drops_model ON models.shadow_drops (model_name, candidate_version, at);

GRANT SELECT, INSERT, UPDATE ON models.shadow_settings TO doctag_model;
GRANT SELECT, INSERT, DELETE ON models.shadow_comparisons, models.shadow_drops TO doctag_model;
GRANT USAGE ON SEQUENCE models.shadow_comparisons_id_seq, models.shadow_drops_id_seq TO doctag_model;

ALTER TABLE models.dataset_rows ADD COLUMN negative boolean NOT NULL DEFAULT false;

DROP FUNCTION documents.training_feedback(integer);
CREATE FUNCTION documents.training_feedback(max_rows integer)
RETURNS TABLE (document_id uuid, title text, text_content text, tag text, negative boolean, tagged_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
  SELECT * FROM (
    SELECT d.id, d.title, d.text_content, t.tag, false, t.created_at
    FROM documents.document_tags t JOIN documents.documents d ON d.id = t.document_id
    WHERE t.tenant_id = public.app_tenant_id() AND d.tenant_id = public.app_tenant_id()
      AND t.source = 'user' AND d.status = 'tagged' AND d.deleted_at IS NULL
      AND d.text_content IS NOT NULL
    UNION ALL
    SELECT d.id, d.title, d.text_content, r.tag, true, r.rejected_at
    FROM documents.tag_rejections r JOIN documents.documents d ON d.id = r.document_id
    WHERE r.tenant_id = public.app_tenant_id() AND d.tenant_id = public.app_tenant_id()
      AND d.status = 'tagged' AND d.deleted_at IS NULL AND d.text_content IS NOT NULL
  ) f (document_id, title, text_content, tag, negative, tagged_at)
  ORDER BY tagged_at, document_id, tag, negative LIMIT max_rows
$f$;
REVOKE ALL ON FUNCTION documents.training_feedback(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION documents.training_feedback(integer) TO doctag_model;
"""

DOWNGRADE = r"""
DROP FUNCTION documents.training_feedback(integer);
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
GRANT EXECUTE ON FUNCTION documents.training_feedback(integer) TO doctag_model;
ALTER TABLE models.dataset_rows DROP COLUMN negative;
DROP TABLE models.shadow_drops;
DROP TABLE models.shadow_comparisons;
DROP TABLE models.shadow_settings;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
