"""Storage quota warning: the quotas row remembers that the current crossing of the warning
threshold (80% by default) was announced.

`warned_at` is set, in the same transaction as the `quota.warning` outbox row, by the upload
that brings usage to the threshold or above; it is cleared (re-armed) once usage is below the
threshold again, after deletions. Uploads of one tenant already serialise on this row (the
quota reservation locks it), so exactly one upload sees the crossing and one event is written.

No new policy or grant: the column belongs to a table that already has row-level security,
and doctag_upload may already update it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE documents.quotas ADD COLUMN warned_at timestamptz")


def downgrade() -> None:
    op.execute("ALTER TABLE documents.quotas DROP COLUMN warned_at")
