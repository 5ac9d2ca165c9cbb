"""Morphemes with their position in the text, for snippets and title boosts.

`services.common.korean` is the analyser the index is built with; here it also analyses
queries and tells where each term stands in a snippet's text, so a query for 늘리다 can
highlight 늘렸다. CPU work: call it from a
worker thread (`asyncio.to_thread`), never on the event loop.
"""
from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Gauge

from services.common import korean
from services.common.analyser_warmup import WARM_UP_TEXT, AnalyserWarmUp
from services.common.korean import Morpheme

from . import query

ANALYSER_LOAD_SECONDS = Gauge("doctag_search_analyser_load_seconds",
                              "Time the Korean analyser took to load and analyse its first text (0 until loaded)")

# Kiwi handles up to this many characters in one call quickly (see korean._chunks).
MAX_SPAN_CHARS = 5000


@dataclass(frozen=True)
class AnalyzedQuery:
    text: str
    terms: tuple[str, ...]     # ranked terms: free words and phrase words (korean.analyze)
    excluded: tuple[str, ...]  # terms of -words
    phrases: tuple[str, ...]   # "quoted" phrases as written


def morphemes(text: str, max_chars: int = MAX_SPAN_CHARS) -> list[Morpheme]:
    """Terms of the first `max_chars` characters of `text`, with offsets."""
    return korean.morphemes(text[:max_chars])


def analyze_query(text: str) -> AnalyzedQuery:
    """The query's operators, its words analysed exactly as documents are at upload."""
    parts = query.parse_operators(text)
    terms = dict.fromkeys(korean.analyze(" ".join((*parts.words, *parts.phrases))))
    excluded = dict.fromkeys(korean.analyze(" ".join(parts.excluded)))
    return AnalyzedQuery(text=text, terms=tuple(t for t in terms if t not in excluded),
                         excluded=tuple(excluded), phrases=parts.phrases)


class Analyser(AnalyserWarmUp):
    """The search replica's warm-up: one query analysis (operators included), timed in a gauge."""

    def __init__(self) -> None:
        super().__init__(load=lambda: analyze_query(WARM_UP_TEXT), on_loaded=ANALYSER_LOAD_SECONDS.set)
