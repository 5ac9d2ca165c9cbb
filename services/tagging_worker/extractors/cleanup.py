"""Normalises extracted text: NFC, `\\n` newlines, no control characters.

PostgreSQL text cannot hold NUL and protobuf strings cannot hold lone surrogates,
so both are removed here, once, for every format.
"""
from __future__ import annotations

import re
import unicodedata

# C0/C1 controls except tab and newline, lone surrogates, and the BOM / zero-width no-break space.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufeff]")
_MANY_BLANK_LINES = re.compile(r"\n{3,}")


def normalise_text(text: str, max_chars: int | None = None) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
    text = text.replace("\f", "\n").replace("\v", "\n")
    text = _CONTROL.sub("", text)
    text = unicodedata.normalize("NFC", text)
    # Line by line, not a regular expression: "[ \t]+\n" takes quadratic time on a long run of
    # blanks without a newline (a hostile one-line file would hold the extractor for minutes).
    text = "\n".join(line.rstrip(" \t\u3000") for line in text.split("\n"))
    text = _MANY_BLANK_LINES.sub("\n\n", text).strip()
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars]
    return text
