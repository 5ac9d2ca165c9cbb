"""Search: the documents carrying a tag are read from the (tenant_id, tag) index alone.

A search under a tag filter starts from the documents carrying the tag (`query._tagged`): the
(tenant_id, tag) index finds the tag's rows, and each row's `document_id` and `document_deleted`
(the search role's policy since 0023) were then read from the table. At 500,000 documents
(`make bench-search`'s corpus, this machine) a tag on 3,795 documents spent 17-20 ms in those
table reads, a fifth of the tag-side statement; read from the index alone it takes 1.6 ms.

The index now carries both columns (`INCLUDE`), so the read is index-only wherever the table's
pages are marked all-visible (autovacuum does so). It is larger: 64 MB instead of 7 MB per million
tag rows, since entries with payload columns are not deduplicated. Rebuilding it blocks writes
to `document_tags` for the length of one index build.

Measured and not done: carrying `tf` and `field_length` in `document_terms`' primary key. The
tag-side statement's probes of that key mostly find no posting (3,795 probes, 15 documents with
the terms), so there was no table read to save; the larger key made the statement no faster
(105-121 ms against 80-110 ms, six runs each).

Revision ID: 0024_covering_tag_index
Revises: 0023_tag_deleted_flag
Create Date: 2026-12-01
"""
from alembic import op

revision = "0024_covering_tag_index"
down_revision = "0023_tag_deleted_flag"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX documents.document_tags_tenant_tag")
    op.execute("CREATE INDEX document_tags_tenant_tag ON documents.document_tags (tenant_id, tag) "
               "INCLUDE (document_id, document_deleted)")


def downgrade() -> None:
    op.execute("DROP INDEX documents.document_tags_tenant_tag")
    op.execute("CREATE INDEX document_tags_tenant_tag ON documents.document_tags (tenant_id, tag)")
