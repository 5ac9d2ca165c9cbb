"""HTML snippets around the first place a query term occurs, with the matches marked.

The snippet is HTML: every character of the document is escaped, and the only markup is
`<mark>` around each word that matched a query term, the word as written (`<mark>예산을</mark>`
for the query 예산). Pure logic: the caller passes the analyser (`marks`).

Cuts only at character boundaries that keep Korean intact: never between a decomposed
Hangul leading consonant and its vowel or final consonant (text extracted from some files
is in NFD), never before a combining mark, and preferably at a space so no word is cut
in half.
"""
from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable, Sequence

SNIPPET_CHARS = 160
LEAD_CHARS = 50       # context kept before the match
WORD_SLACK = 15       # how far a cut may move to land on a space
ELLIPSIS = "…"

# (start, end) of the first occurrence of a query term in the given text, or None.
Locator = Callable[[str], "tuple[int, int] | None"]
# (start, end) of every occurrence of a query term in the given text.
Marker = Callable[[str], "list[tuple[int, int]]"]


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


def _is_hangul(text: str) -> bool:
    return any("\uac00" <= c <= "\ud7a3" for c in text)


def literal_spans(text: str, terms: Sequence[str], min_chars: int = 2) -> list[tuple[int, int]]:
    """Where query terms occur as written, without the analyser: at the start of a word, a Hangul
    term followed by anything (예산 in 예산을, 예산안), any other term as a whole word (`tax` not in
    "taxonomy"). Terms shorter than `min_chars` are skipped (one syllable occurs inside too many
    unrelated words); case-insensitive."""
    words = sorted({t for t in terms if len(t) >= min_chars}, key=len, reverse=True)
    if not words or not text:
        return []
    spans: list[tuple[int, int]] = []
    pattern = re.compile("|".join(re.escape(w) for w in words), re.IGNORECASE)
    for m in pattern.finditer(text):
        start, end = m.span()
        if start > 0 and text[start - 1].isalnum():
            continue
        if not _is_hangul(m.group(0)) and end < len(text) and text[end].isalnum():
            continue
        spans.append((start, end))
    return spans


def bounds(text: str, start: int, end: int, width: int = SNIPPET_CHARS) -> tuple[int, int]:
    """[lo, hi) of about `width` characters of `text` around [start, end), cut at safe places."""
    if len(text) <= width:
        return 0, len(text)
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
    return lo, hi


def window(text: str, start: int, end: int, width: int = SNIPPET_CHARS) -> str:
    """About `width` characters of `text` around [start, end), with … where cut (plain text)."""
    lo, hi = bounds(text, start, end, width)
    return (ELLIPSIS if lo > 0 else "") + text[lo:hi].strip() + (ELLIPSIS if hi < len(text) else "")


def word_spans(text: str, spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Each span widened to the whole word around it (the letters and digits written together:
    예산 -> 예산을, not the punctuation or markup next to it), overlapping words merged, in order."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        lo, hi = start, end
        while lo > 0 and text[lo - 1].isalnum():
            lo -= 1
        while hi < len(text) and text[hi].isalnum():
            hi += 1
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def highlight(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """`text` HTML-escaped, with `<mark>` around each of the (non-overlapping, ordered) spans."""
    parts: list[str] = []
    pos = 0
    for start, end in spans:
        parts.append(html.escape(text[pos:start]))
        parts.append(f"<mark>{html.escape(text[start:end])}</mark>")
        pos = end
    parts.append(html.escape(text[pos:]))
    return "".join(parts)


def _render(text: str, start: int, end: int, width: int, marks: Marker | None) -> str:
    lo, hi = bounds(text, start, end, width)
    raw = text[lo:hi]
    piece = raw.strip()
    lead = len(raw) - len(raw.lstrip())
    spans = [(s - lead, e - lead) for s, e in (marks(raw) if marks else [])]
    spans = [(s, e) for s, e in spans if 0 <= s < e <= len(piece)]
    body = highlight(piece, word_spans(piece, spans))
    return (ELLIPSIS if lo > 0 else "") + body + (ELLIPSIS if hi < len(text) else "")


def make_snippet(
    text: str | None,
    title: str,
    needles: Sequence[str],
    *,
    locate: Locator | None = None,
    marks: Marker | None = None,
    width: int = SNIPPET_CHARS,
) -> str:
    """HTML snippet from the text around the first needle; else from the title; else the start.

    `needles` are literal spellings (the query's terms and phrases); `locate` is asked only
    when none of them occurs literally in the text (an inflected form such as 늘렸다 for
    늘리다), and finds the term by analysis. `marks` gives the spans to highlight in the
    chosen piece of text (matched query terms); without it nothing is marked.
    """
    body = collapse_whitespace(text or "")
    head = collapse_whitespace(title or "")
    if body:
        found = first_occurrence(body, needles) or (locate(body) if locate else None)
        if found:
            return _render(body, *found, width=width, marks=marks)
    found_in_title = first_occurrence(head, needles)
    if found_in_title:
        return _render(head, *found_in_title, width=width, marks=marks)
    source = body or head
    return _render(source, 0, 0, width=width, marks=marks)
