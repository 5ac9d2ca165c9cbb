"""Text extraction: bytes + declared filename/content type → normalised UTF-8 text and what
is known about the file (`Extracted`: its format, the extractor used, its page or section count).

Formats: PDF (pdf.py), DOCX (docx.py), HWP 5.0 (hwp.py), HWPX (hwpx.py), HTML and XML
(markup.py) and plain text, CSV and Markdown included (text.py); detect.py decides which from
the bytes and the declared name/type.

`extract_document` runs in-process and raises `ExtractionError(reason)`; the worker
calls it through `IsolatedExtractor`, which runs it in a child process with a
time limit so a crashing or hanging parser never takes the worker down.
`extract_text` is the same, for callers that want the text alone.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from .cleanup import normalise_text
from .detect import Format, resolve_format
from .docx import extract_docx
from .errors import ExtractionError
from .hwp import read_hwp
from .hwpx import read_hwpx
from .limits import Limits
from .markup import extract_html, extract_xml
from .pdf import read_pdf
from .text import decode_text

__all__ = ["Extracted", "ExtractionError", "Format", "Limits", "extract_document", "extract_text"]

# The module that reads each format and the library it reads it with (None: our own code only).
_EXTRACTORS: dict[Format, tuple[str, str | None]] = {
    Format.PDF: ("pdf", "pypdfium2"),
    Format.DOCX: ("docx", "python-docx"),
    Format.HWP: ("hwp", "olefile"),
    Format.HWPX: ("hwpx", "lxml"),
    Format.HTML: ("html", "lxml"),
    Format.XML: ("xml", "lxml"),
    Format.TEXT: ("text", None),
}


@dataclass(frozen=True)
class Extracted:
    """A document's text and what the extractor learnt about the file on the way."""

    text: str               # NFC, `\\n` newlines; may be empty
    format: str             # the format it was read as: a `Format` value ("pdf", "hwp", "txt" ...)
    extractor: str          # module and library with its version: "pdf/pypdfium2 5.15.2", "text"
    pages: int | None       # PDF: pages in the file; None where the format has no reliable count (DOCX)
    sections: int | None    # HWP/HWPX: sections (구역) in the file; None for the other formats

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as the extractor's child process sends them back."""
        return {"text": self.text, "format": self.format, "extractor": self.extractor,
                "pages": self.pages, "sections": self.sections}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> Extracted:
        return cls(text=str(value["text"]), format=str(value["format"]), extractor=str(value["extractor"]),
                   pages=_optional_int(value["pages"]), sections=_optional_int(value["sections"]))


def extract_document(data: bytes, filename: str = "", content_type: str = "",
                     limits: Limits | None = None) -> Extracted:
    """The document's text and metadata. An ExtractionError raised once the format is known
    carries that format and the extractor's name."""
    limits = limits or Limits()
    fmt = resolve_format(data, filename, content_type)
    extractor = extractor_name(fmt)
    pages: int | None = None
    sections: int | None = None
    try:
        if fmt is Format.PDF:
            pdf = read_pdf(data, limits)
            raw, pages = pdf.text, pdf.pages
        elif fmt is Format.DOCX:
            raw = extract_docx(data, limits)
        elif fmt is Format.HWP:
            hwp = read_hwp(data, limits)
            raw, sections = hwp.text, hwp.sections
        elif fmt is Format.HWPX:
            hwpx = read_hwpx(data, limits)
            raw, sections = hwpx.text, hwpx.sections
        elif fmt is Format.HTML:
            raw = extract_html(data)
        elif fmt is Format.XML:
            raw = extract_xml(data)
        else:
            raw = decode_text(data)
    except ExtractionError as exc:
        raise ExtractionError(exc.reason, format=fmt.value, extractor=extractor) from exc
    return Extracted(text=normalise_text(raw, limits.max_chars), format=fmt.value, extractor=extractor,
                     pages=pages, sections=sections)


def extract_text(data: bytes, filename: str = "", content_type: str = "", limits: Limits | None = None) -> str:
    """The document's text (NFC, `\\n` newlines; may be empty, e.g. a scanned PDF)."""
    return extract_document(data, filename, content_type, limits).text


@functools.cache
def extractor_name(fmt: Format) -> str:
    """"pdf/pypdfium2 5.15.2": the module reading `fmt` and its library's installed version."""
    module, library = _EXTRACTORS[fmt]
    if library is None:
        return module
    try:
        return f"{module}/{library} {metadata.version(library)}"
    except metadata.PackageNotFoundError:  # pragma: no cover - the library imported, so it is installed
        return f"{module}/{library}"


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)
