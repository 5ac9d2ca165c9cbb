"""Extraction metadata: what the tagging worker's extractor learnt about a document's file.

- `detected_format`: the format it was read as (pdf, docx, hwp, hwpx, txt, html, xml);
- `extractor`: the module and library version that read it ("pdf/pypdfium2 5.15.2");
- `page_count`: PDF pages; `section_count`: HWP/HWPX sections (구역).

All nullable: NULL until the document is processed, and for what a format or a failure does not
tell. Written by RecordTaggingResult (tagged, and failed where known).

No new policy or grant: the columns belong to a table that already has row-level security, and
doctag_upload's table-level SELECT/UPDATE (doctag_search's SELECT) cover new columns.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26
"""
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
ALTER TABLE documents.documents
    ADD COLUMN detected_format text,
    ADD COLUMN extractor text,
    ADD COLUMN page_count integer CHECK (page_count >= 0),
    ADD COLUMN section_count integer CHECK (section_count >= 0)
""")


def downgrade() -> None:
    op.execute("""
ALTER TABLE documents.documents
    DROP COLUMN detected_format,
    DROP COLUMN extractor,
    DROP COLUMN page_count,
    DROP COLUMN section_count
""")
