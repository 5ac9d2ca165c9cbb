"""Test helper: index a document inserted directly as the admin, exactly as the upload
service does (the same analyser, the same repository SQL), on a synchronous connection."""
from __future__ import annotations

import psycopg

from services.common.korean import analyser_version, analyze
from services.upload import repository as repo


def index_document(conn: psycopg.Connection, tenant: str, doc_id: str, title: str, text: str | None) -> None:
    """Writes the title's and the text's postings and lengths, as `repo.reindex_document` does."""
    conn.execute("SELECT set_config('app.tenant_id', %s, false)", (tenant,))
    title_terms, text_terms = analyze(title), analyze(text or "")
    for field, terms in (("title", title_terms), ("text", text_terms)):
        conn.execute(repo.DELETE_TERMS_SQL, (doc_id, field))
        distinct, tfs = repo.term_frequencies(terms)
        if distinct:
            conn.execute(repo.INSERT_TERMS_SQL, (doc_id, field, len(terms), distinct, tfs))
    conn.execute(repo.REINDEXED_SQL, (len(title_terms), len(text_terms), analyser_version(), doc_id))
