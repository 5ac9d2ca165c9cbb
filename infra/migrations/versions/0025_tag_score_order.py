"""Search: a tag's documents can be read best first, and counted, from the (tenant_id, tag) index alone.

A search without q under one tag lists the tag's documents by the confidence of the tag
(`query._BROWSE_ONE_TAG`). Before, every document carrying the tag was scored by a lookup of its
tags, then all were sorted for the page and counted for the total: 4.0-4.8 s for a tag on 473,000
of 500,000 documents (`make bench-search`'s corpus), however small the page.

The (tenant_id, tag) index now has the tag's score in its key, descending, so the page is read
in order and stops when it is full; and it carries `source` beside `document_id` and
`document_deleted`, so the total is counted from the index alone (a document carrying the tag
from the model and from a person is told apart by `source`, see `query._COUNT_ONE_TAG`). What
read the index before (the documents carrying every requested tag, `query._tagged`) reads it as
it did, by its first two columns.

It is larger: 82 MB instead of 64 MB for a million tag rows (the bench database). Rebuilding
it blocks writes to `document_tags` for the length of one index build.

Revision ID: 0025_tag_score_order
Revises: 0024_covering_tag_index
Create Date: 2026-12-01
"""
from alembic import op

revision = "0025_tag_score_order"
down_revision = "0024_covering_tag_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX documents.document_tags_tenant_tag")
    op.execute("CREATE INDEX document_tags_tenant_tag ON documents.document_tags (tenant_id, tag, score DESC) "
               "INCLUDE (document_id, document_deleted, source)")


def downgrade() -> None:
    op.execute("DROP INDEX documents.document_tags_tenant_tag")
    op.execute("CREATE INDEX document_tags_tenant_tag ON documents.document_tags (tenant_id, tag) "
               "INCLUDE (document_id, document_deleted)")
