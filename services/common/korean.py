"""Korean morphological analysis for full-text search (kiwipiepy).

Korean attaches particles and endings to words (예산을, 예산이, 예산은), so a
tsvector over raw text never matches the bare word. Index and query both go
through `search_terms`: the content morphemes (nouns, verb and adjective stems,
roots, foreign words, numbers), lower-cased, space-separated, ready for
`to_tsvector('simple', ...)`.
"""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache

# Content-bearing parts of speech (Sejong tag set as used by Kiwi).
_KEEP_PREFIXES = ("NN", "NR", "NP", "SL", "SH", "SN", "XR")
_STEM_TAGS = ("VV", "VA")
_MAX_CHARS_PER_CHUNK = 5000

_lock = threading.Lock()


@lru_cache(maxsize=1)
def _kiwi():  # type: ignore[no-untyped-def]
    from kiwipiepy import Kiwi

    # num_workers=0: analyse in the calling thread (the services run one analysis per request thread).
    # kiwipiepy >= 0.21 warns that 0 used to mean "all cores"; single-threaded is what is meant here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="behavior of `num_workers=0`", category=DeprecationWarning)
        return Kiwi(num_workers=0)


def _chunks(text: str) -> list[str]:
    """Splits long text on whitespace into pieces Kiwi handles quickly."""
    out, start = [], 0
    while start < len(text):
        end = min(len(text), start + _MAX_CHARS_PER_CHUNK)
        if end < len(text):
            cut = text.rfind(" ", start, end)
            end = cut if cut > start else end
        out.append(text[start:end])
        start = end
    return out


@dataclass(frozen=True)
class Morpheme:
    term: str   # as indexed: lower-cased; verb/adjective stems get 다 (늘렸다 -> 늘리다)
    start: int  # character offsets into the analysed text
    end: int


def _term(form: str, tag: str) -> str | None:
    """The index term of one Kiwi token, or None for particles, endings and punctuation."""
    if tag.startswith(_KEEP_PREFIXES):
        term = form
    elif tag.startswith(_STEM_TAGS):
        term = form + "다"
    else:
        return None
    return term.strip().lower() or None


def morphemes(text: str) -> list[Morpheme]:
    """The content morphemes of `text` in order (duplicates kept), with their offsets."""
    if not text or not text.strip():
        return []
    out: list[Morpheme] = []
    kiwi = _kiwi()
    offset = 0
    for chunk in _chunks(text):
        with _lock:
            tokens = kiwi.tokenize(chunk)
        for tok in tokens:
            term = _term(tok.form, tok.tag)
            if term:
                out.append(Morpheme(term, offset + tok.start, offset + tok.start + tok.len))
        offset += len(chunk)
    return out


def analyze(text: str) -> list[str]:
    """The content morphemes of `text`, in order (duplicates kept)."""
    return [m.term for m in morphemes(text)]


def search_terms(text: str) -> str:
    """Space-separated morphemes for `to_tsvector('simple', ...)`."""
    return " ".join(analyze(text))
