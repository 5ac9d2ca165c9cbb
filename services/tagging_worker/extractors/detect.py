"""Which format a file really is: from its bytes, cross-checked with its declared name/type.

The extension (or, without one, the declared content type) says what the user
thinks they uploaded; the magic numbers say what it is. A supported declared
format must match the bytes; an undeclared one (no extension, octet-stream) is
taken from the bytes.

HWP 5.0 files are OLE compound files with a `FileHeader` stream; HWPX files are ZIP packages
whose `mimetype` entry says "application/hwp+zip" or that hold `Contents/section0.xml`. A
file declared as HWP whose bytes are not an OLE file (a renamed text file, an HWP 3.0 file)
fails with a reason; it is never read as text. Upload already refuses such files (415), so
only files declared by content type alone get here.

HTML and XML are text formats with markup (their visible text is extracted, markup.py);
CSV and Markdown are read as plain text. Like a .txt file, they must not be a PDF, ZIP or
OLE file in disguise.
"""
from __future__ import annotations

import io
import zipfile
from enum import StrEnum
from pathlib import PurePosixPath

import olefile

from .errors import ExtractionError


class Format(StrEnum):
    PDF = "pdf"
    DOCX = "docx"
    HWP = "hwp"
    HWPX = "hwpx"
    TEXT = "txt"
    HTML = "html"
    XML = "xml"


_EXTENSIONS = {".pdf": Format.PDF, ".docx": Format.DOCX, ".hwp": Format.HWP, ".hwpx": Format.HWPX,
               ".txt": Format.TEXT, ".text": Format.TEXT, ".csv": Format.TEXT, ".md": Format.TEXT,
               ".markdown": Format.TEXT, ".html": Format.HTML, ".htm": Format.HTML, ".xhtml": Format.HTML,
               ".xml": Format.XML}
_CONTENT_TYPES = {
    "application/pdf": Format.PDF,
    "application/x-pdf": Format.PDF,
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": Format.DOCX,
    # Names used for HWP and HWPX by Hancom, browsers and operating systems.
    "application/x-hwp": Format.HWP,
    "application/haansofthwp": Format.HWP,
    "application/vnd.hancom.hwp": Format.HWP,
    "application/hwp+zip": Format.HWPX,
    "application/haansofthwpx": Format.HWPX,
    "application/vnd.hancom.hwpx": Format.HWPX,
    "text/plain": Format.TEXT,
    "text/html": Format.HTML,
    "application/xhtml+xml": Format.HTML,
    "text/xml": Format.XML,
    "application/xml": Format.XML,
}
_GENERIC_TYPES = {"", "application/octet-stream", "binary/octet-stream", "application/unknown"}
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_HWPX_MIMETYPE = b"application/hwp+zip"
_HWP3_SIGNATURE = b"HWP Document File"  # HWP 3.0 files start with it; HWP 5.0 files are OLE
# Office files protected with a password are OLE containers with this stream (UTF-16 name).
_OFFICE_ENCRYPTION_STREAM = "EncryptionInfo".encode("utf-16-le")


def declared_format(filename: str, content_type: str) -> Format | str | None:
    """The declared format, a label of an unsupported one (".hwp"), or None when nothing useful was declared."""
    suffix = PurePosixPath(filename.replace("\\", "/")).suffix.lower() if filename else ""
    if suffix:
        return _EXTENSIONS.get(suffix, suffix)
    media = content_type.split(";", 1)[0].strip().lower()
    if media in _GENERIC_TYPES:
        return None
    if media in _CONTENT_TYPES:
        return _CONTENT_TYPES[media]
    if media.startswith("text/"):  # text/csv, text/markdown, ...
        return Format.TEXT
    return media


def sniff(data: bytes) -> str:
    """"pdf", "zip", "ole" or "other" from the first bytes."""
    if b"%PDF-" in data[:1024]:
        return "pdf"
    if data.startswith(_ZIP_MAGIC):
        return "zip"
    if data.startswith(_OLE_MAGIC):
        return "ole"
    return "other"


def resolve_format(data: bytes, filename: str, content_type: str) -> Format:
    """The format to extract with, or ExtractionError saying why the file cannot be read."""
    if not data:
        raise ExtractionError("the file is empty")
    declared = declared_format(filename, content_type)
    actual = sniff(data)
    if isinstance(declared, str) and not isinstance(declared, Format):
        raise ExtractionError(f"unsupported file type: {declared}")
    if declared is Format.PDF:
        if actual != "pdf":
            raise ExtractionError("not a valid PDF file")
        return Format.PDF
    if declared is Format.DOCX:
        if actual == "ole":
            if _OFFICE_ENCRYPTION_STREAM in data:
                raise ExtractionError("the DOCX file is encrypted (password-protected); "
                                      "remove the password and upload it again")
            if _is_hwp(data):
                raise ExtractionError("not a valid DOCX file: it is an HWP file; upload it named .hwp")
            raise ExtractionError("not a valid DOCX file: it is an older Word (.doc) or other OLE file")
        if actual != "zip":
            raise ExtractionError("not a valid DOCX file")
        return Format.DOCX
    if declared is Format.HWP:
        if data.startswith(_HWP3_SIGNATURE):
            raise ExtractionError("HWP 3.0 files (한글 97 and older) are not supported; "
                                  "save the document as HWP 5.0 or HWPX and upload it again")
        if actual != "ole":
            raise ExtractionError("not a valid HWP file: the content is not an HWP 5.0 (OLE compound) file")
        return Format.HWP
    if declared is Format.HWPX:
        if actual != "zip":
            raise ExtractionError("not a valid HWPX file: the content is not a ZIP package")
        return Format.HWPX
    if declared in (Format.TEXT, Format.HTML, Format.XML):
        if actual in ("pdf", "zip", "ole"):
            raise ExtractionError(f"not a text file: the content is a {_describe(actual, data)}")
        return declared
    # Nothing useful declared: trust the bytes.
    if actual == "pdf":
        return Format.PDF
    if actual == "zip":
        if _zip_has(data, "word/document.xml"):
            return Format.DOCX
        if _is_hwpx(data):
            return Format.HWPX
        raise ExtractionError(f"unsupported file type: {_describe(actual, data)}")
    if actual == "ole":
        if _is_hwp(data):
            return Format.HWP
        raise ExtractionError(f"unsupported file type: {_describe(actual, data)}")
    return Format.TEXT


def _zip_has(data: bytes, name: str) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return name in archive.namelist()
    except (zipfile.BadZipFile, EOFError, ValueError):
        return False


def _is_hwp(data: bytes) -> bool:
    """An OLE compound file with the FileHeader stream of HWP 5.0."""
    try:
        with olefile.OleFileIO(io.BytesIO(data)) as ole:
            return bool(ole.exists("FileHeader"))
    except Exception:  # noqa: BLE001 - a damaged OLE file is simply not recognised as HWP
        return False


def _is_hwpx(data: bytes) -> bool:
    """A ZIP package with the HWPX mimetype entry, or at least a first section part."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
            if "mimetype" in names and archive.getinfo("mimetype").file_size <= 64:
                return archive.read("mimetype").strip() == _HWPX_MIMETYPE or "Contents/section0.xml" in names
            return "Contents/section0.xml" in names
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, RuntimeError, OSError):
        return False


def _describe(actual: str, data: bytes) -> str:
    if actual == "pdf":
        return "PDF document"
    if actual == "ole":
        return "OLE compound file (HWP, DOC or similar)"
    if _zip_has(data, "word/document.xml"):
        return "DOCX document"
    if _is_hwpx(data):
        return "HWPX document"
    return "ZIP archive"
