"""Morphemes with their position in the text, for snippets and title boosts.

`services.common.korean.analyze` gives the terms the index is built from; here the
same Kiwi instance (and its lock) is asked for where each content morpheme stands,
so a query for 늘리다 can point at 늘렸다 in a document. Uses the analyser's own
part-of-speech rules so both agree on what a term is. CPU work: call it from a
worker thread (`asyncio.to_thread`), never on the event loop.
"""
from __future__ import annotations

from dataclasses import dataclass

from services.common import korean
from services.common.korean import Morpheme

# Kiwi handles up to this many characters in one call quickly (see korean._chunks).
MAX_SPAN_CHARS = 5000


@dataclass(frozen=True)
class AnalyzedQuery:
    text: str
    terms: tuple[str, ...]     # what the index holds (korean.analyze)
    surfaces: tuple[str, ...]  # how the terms are spelled in the query (예산, 늘렸 ...)


def morphemes(text: str, max_chars: int = MAX_SPAN_CHARS) -> list[Morpheme]:
    """Content morphemes of the first `max_chars` characters of `text`, with offsets."""
    return korean.morphemes(text[:max_chars])


def analyze_query(text: str) -> AnalyzedQuery:
    terms = tuple(korean.analyze(text))
    surfaces: list[str] = []
    for m in morphemes(text):
        surface = text[m.start:m.end].strip().lower()
        if surface and surface not in surfaces:
            surfaces.append(surface)
    return AnalyzedQuery(text=text, terms=terms, surfaces=tuple(surfaces))
