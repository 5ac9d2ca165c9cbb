"""Plain-text snippets around the first place a query term occurs.

Pure logic. Cuts only at character boundaries that keep Korean intact: never
between a decomposed Hangul leading consonant and its vowel or final consonant
(text extracted from some files is in NFD), never before a combining mark, and
preferably at a space so no word is cut in half.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence

SNIPPET_CHARS = 160
LEAD_CHARS = 50       # context kept before the match
WORD_SLACK = 15       # how far a cut may move to land on a space
ELLIPSIS = "…"

# (start, end) of the first occurrence of a query term in the given text, or None.
Locator = Callable[[str], "tuple[int, int] | None"]


def collapse_whitespace(text: str) -> str:
    return " ".join(text.split())


def _is_continuation(ch: str) -> bool:
    """True for a character that belongs to the one before it (must not start a cut)."""
    cp = ord(ch)
    return (
        0x1160 <= cp <= 0x11FF      # Hangul Jamo vowels and final consonants
        or 0xD7B0 <= cp <= 0xD7FF   # Hangul Jamo Extended-B (vowels, finals)
        or 0xFE00 <= cp <= 0xFE0F   # variation selectors
        or cp == 0x200D             # zero-width joiner
        or unicodedata.combining(ch) != 0
    )


def safe_cut(text: str, index: int) -> int:
    """The nearest index at or before `index` where the text may be cut."""
    index = max(0, min(index, len(text)))
    while 0 < index < len(text) and _is_continuation(text[index]):
        index -= 1
    return index


def first_occurrence(text: str, needles: Sequence[str]) -> tuple[int, int] | None:
    """Leftmost case-insensitive occurrence of any needle (longest wins at the same place)."""
    words = sorted({collapse_whitespace(n) for n in needles if n and n.strip()}, key=len, reverse=True)
    if not words or not text:
        return None
    match = re.search("|".join(re.escape(w) for w in words), text, re.IGNORECASE)
    return (match.start(), match.end()) if match else None


def window(text: str, start: int, end: int, width: int = SNIPPET_CHARS) -> str:
    """About `width` characters of `text` around [start, end), with … where cut."""
    if len(text) <= width:
        return text
    lo = max(0, start - LEAD_CHARS)
    hi = min(len(text), lo + width)
    lo = max(0, hi - width)
    if lo > 0:
        space = text.find(" ", lo, min(lo + WORD_SLACK, start))
        lo = space + 1 if space != -1 else lo
    if hi < len(text):
        space = text.rfind(" ", max(hi - WORD_SLACK, end), hi)
        hi = space if space != -1 else hi
    # A cut must not split a character sequence; move the start back and the end back.
    lo = safe_cut(text, lo)
    hi = safe_cut(text, hi)
    if hi <= lo:
        hi = safe_cut(text, min(len(text), lo + width))
    piece = text[lo:hi].strip()
    return (ELLIPSIS if lo > 0 else "") + piece + (ELLIPSIS if hi < len(text) else "")


def make_snippet(
    text: str | None,
    title: str,
    needles: Sequence[str],
    *,
    locate: Locator | None = None,
    width: int = SNIPPET_CHARS,
) -> str:
    """Snippet from the text around the first needle; else from the title; else the start.

    `needles` are literal spellings (the raw query, its words and terms); `locate`
    is asked only when none of them occurs literally in the text (an inflected
    form such as 늘렸다 for 늘리다), and finds the term by analysis.
    """
    body = collapse_whitespace(text or "")
    head = collapse_whitespace(title or "")
    if body:
        found = first_occurrence(body, needles) or (locate(body) if locate else None)
        if found:
            return window(body, *found, width=width)
    found_in_title = first_occurrence(head, needles)
    if found_in_title:
        return window(head, *found_in_title, width=width)
    source = body or head
    return window(source, 0, 0, width=width)
