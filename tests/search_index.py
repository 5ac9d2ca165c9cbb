"""Test helper: index a document inserted directly as the admin, exactly as the upload
service does (the same analyser, the same repository SQL), on a synchronous connection."""
from __future__ import annotations

import psycopg

from services.common.korean import analyze
from services.upload import repository as repo


def index_document(conn: psycopg.Connection, tenant: str, doc_id: str, title: str, text: str | None) -> None:
    """Writes the title's and the text's postings and lengths (the text only when there is one)."""
    conn.execute("SELECT set_config('app.tenant_id', %s, false)", (tenant,))
    fields = [("title", analyze(title))] + ([("text", analyze(text))] if text else [])
    for field, terms in fields:
        conn.execute(repo.DELETE_TERMS_SQL, (doc_id, field))
        distinct, tfs = repo.term_frequencies(terms)
        if distinct:
            conn.execute(repo.INSERT_TERMS_SQL, (doc_id, field, len(terms), distinct, tfs))
        conn.execute(repo.FIELD_LENGTH_SQL[field], (len(terms), doc_id))
