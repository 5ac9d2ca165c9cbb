"""Text extraction: bytes + declared filename/content type → normalised UTF-8 text.

Formats: PDF (pdf.py), DOCX (docx.py), HWP 5.0 (hwp.py), HWPX (hwpx.py), HTML and XML
(markup.py) and plain text, CSV and Markdown included (text.py); detect.py decides which from
the bytes and the declared name/type.

`extract_text` runs in-process and raises `ExtractionError(reason)`; the worker
calls it through `IsolatedExtractor`, which runs it in a child process with a
time limit so a crashing or hanging parser never takes the worker down.
"""
from __future__ import annotations

from .cleanup import normalise_text
from .detect import Format, resolve_format
from .docx import extract_docx
from .errors import ExtractionError
from .hwp import extract_hwp
from .hwpx import extract_hwpx
from .limits import Limits
from .markup import extract_html, extract_xml
from .pdf import extract_pdf
from .text import decode_text

__all__ = ["ExtractionError", "Format", "Limits", "extract_text"]


def extract_text(data: bytes, filename: str = "", content_type: str = "", limits: Limits | None = None) -> str:
    """The document's text (NFC, `\\n` newlines; may be empty, e.g. a scanned PDF)."""
    limits = limits or Limits()
    fmt = resolve_format(data, filename, content_type)
    if fmt is Format.PDF:
        raw = extract_pdf(data, limits)
    elif fmt is Format.DOCX:
        raw = extract_docx(data, limits)
    elif fmt is Format.HWP:
        raw = extract_hwp(data, limits)
    elif fmt is Format.HWPX:
        raw = extract_hwpx(data, limits)
    elif fmt is Format.HTML:
        raw = extract_html(data)
    elif fmt is Format.XML:
        raw = extract_xml(data)
    else:
        raw = decode_text(data)
    return normalise_text(raw, limits.max_chars)
