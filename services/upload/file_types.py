"""Which files the platform accepts, and their canonical content types.

Decided from the file name's extension and confirmed by the first bytes, so a
mislabelled file is refused at the door instead of failing later: a file named
.hwp must be an OLE compound file (HWP 5.0), one named .hwpx or .docx a ZIP
package. Which OLE or ZIP file it is exactly is checked by the tagging worker's
extractor, which reads the whole file.

Text formats (.txt, .csv, .md, .html/.htm, .xml) have no signature: their first bytes must
hold no NUL (UTF-16/32 with a byte order mark aside) and must not be a PDF, ZIP or OLE
file's, so a document renamed to .txt is refused here rather than failing later.
"""
from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass

DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
HWP_TYPE = "application/x-hwp"
HWPX_TYPE = "application/hwp+zip"   # what an HWPX package's own `mimetype` entry says
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
HWP3_SIGNATURE = b"HWP Document File"  # HWP 3.0 (한글 97) files start with it; HWP 5.0 files are OLE


@dataclass(frozen=True)
class FileType:
    name: str
    content_type: str
    magic: tuple[bytes, ...]  # empty: no signature (plain text)


TYPES = {
    ".pdf": FileType("PDF", "application/pdf", (b"%PDF-",)),
    ".docx": FileType("DOCX", DOCX_TYPE, (b"PK\x03\x04",)),
    ".hwp": FileType("HWP", HWP_TYPE, (OLE_MAGIC,)),
    ".hwpx": FileType("HWPX", HWPX_TYPE, (b"PK\x03\x04",)),
    ".txt": FileType("TXT", "text/plain", ()),
    ".csv": FileType("CSV", "text/csv", ()),
    ".md": FileType("Markdown", "text/markdown", ()),
    ".html": FileType("HTML", "text/html", ()),
    ".htm": FileType("HTML", "text/html", ()),
    ".xml": FileType("XML", "application/xml", ()),
}
SUPPORTED = ", ".join(sorted({t.name for t in TYPES.values()}))
# What a text file must not start with: the signatures of the binary formats above.
_BINARY_SIGNATURES = {b"%PDF-": "PDF", b"PK\x03\x04": "ZIP (DOCX, HWPX or other)", OLE_MAGIC: "OLE (HWP, DOC or other)"}
_UNICODE_BOMS = (b"\xff\xfe", b"\xfe\xff")  # UTF-16/32 text holds NUL bytes


class UnsupportedFile(ValueError):
    pass


def clean_filename(raw: str | None) -> str:
    """The base name only, NFC-normalised, without control characters, at most 255 characters."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = unicodedata.normalize("NFC", name)
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip().strip(".")
    if len(name) > 255:
        stem, ext = os.path.splitext(name)
        name = stem[: 255 - len(ext)] + ext
    return name


def file_type_for(filename: str) -> FileType:
    ext = os.path.splitext(filename)[1].lower()
    if ext not in TYPES:
        shown = ext or "(none)"
        raise UnsupportedFile(f"file type {shown} is not supported; supported types: {SUPPORTED}")
    return TYPES[ext]


def check_signature(file_type: FileType, head: bytes) -> None:
    """Raises when the first bytes contradict the declared type."""
    if file_type.name == "HWP" and head.startswith(HWP3_SIGNATURE):
        raise UnsupportedFile("HWP 3.0 files (한글 97 and older) are not supported; "
                              "save the document as HWP 5.0 or HWPX and upload it again")
    if file_type.magic and not any(head.startswith(m) for m in file_type.magic):
        raise UnsupportedFile(f"the file is named as {file_type.name} but its content is not a {file_type.name} file")
    if file_type.magic:
        return
    for signature, kind in _BINARY_SIGNATURES.items():
        if head.startswith(signature):
            raise UnsupportedFile(f"the file is named as {file_type.name} but its content is a {kind} file")
    if b"\x00" in head and not head.startswith(_UNICODE_BOMS):
        raise UnsupportedFile(f"the file is named as {file_type.name} but contains binary data")
