"""Per tenant, the document frequencies of recently searched terms, so a common term is counted once.

BM25's idf needs each query term's document frequency (df). With impact-ordered retrieval a search
reads only a term's best postings, so df must come from elsewhere: the search statement counts it
from the term's index range when it is not known here (or is stale) and hands it back, and this
cache keeps it for `ttl_s`. The statement itself checks that the tenant's document count has not
moved by more than `query.DF_SLACK` since, so a small or fast-changing collection is always
counted afresh and the idf of a large one is off by at most that share.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .query import TermFigures

MAX_ENTRIES = 100_000


class TermFiguresCache:
    """(tenant, term) -> TermFigures, least recently used dropped first."""

    def __init__(self, ttl_s: float = 600.0, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], tuple[float, TermFigures]] = OrderedDict()

    def known(self, tenant: str, terms: Iterable[str]) -> dict[str, TermFigures]:
        now = time.monotonic()
        out: dict[str, TermFigures] = {}
        for term in terms:
            entry = self._entries.get((tenant, term))
            if entry is None:
                continue
            if now - entry[0] > self.ttl_s:
                del self._entries[(tenant, term)]
                continue
            self._entries.move_to_end((tenant, term))
            out[term] = entry[1]
        return out

    def remember(self, tenant: str, figures: Sequence[Mapping[str, Any]] | None, n_documents: float | None) -> None:
        """Keeps the figures the statement counted (`term_figures` rows with counted = true)."""
        if not figures or n_documents is None:
            return
        now = time.monotonic()
        for row in figures:
            if row.get("counted"):
                key = (tenant, str(row["term"]))
                self._entries[key] = (now, TermFigures(float(row["df"]), float(row["postings"]), float(n_documents)))
                self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def truncated(figures: Sequence[Mapping[str, Any]] | None, per_term: int | None) -> bool:
    """True when some term has more postings than were read (the candidates are then its best ones only)."""
    if per_term is None or not figures:
        return False
    return any(float(row["postings"]) > per_term for row in figures)
