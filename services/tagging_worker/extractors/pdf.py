"""PDF text with pypdf, page by page, bounded by `Limits`.

An encrypted PDF is opened with the empty user password when it has one (many
"protected" PDFs only restrict printing/copying); otherwise it fails as encrypted.
"""
from __future__ import annotations

import io
import logging

from pypdf import PdfReader
from pypdf.errors import (
    DependencyError,
    EmptyFileError,
    FileNotDecryptedError,
)

from .errors import ExtractionError
from .limits import Limits

log = logging.getLogger(__name__)
_ENCRYPTED = "the PDF file is encrypted (password-protected); remove the password and upload it again"


def extract_pdf(data: bytes, limits: Limits) -> str:
    if not data:
        raise ExtractionError("the file is empty")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
    except EmptyFileError as exc:
        raise ExtractionError("the file is empty") from exc
    except FileNotDecryptedError as exc:
        raise ExtractionError(_ENCRYPTED) from exc
    except Exception as exc:  # pypdf raises many kinds on broken files
        raise ExtractionError(f"the PDF file is damaged: {_describe(exc)}") from exc

    if reader.is_encrypted:
        _decrypt_with_empty_password(reader)

    try:
        pages = reader.pages
        page_count = len(pages)
    except FileNotDecryptedError as exc:
        raise ExtractionError(_ENCRYPTED) from exc
    except Exception as exc:
        raise ExtractionError(f"the PDF file is damaged: {_describe(exc)}") from exc

    texts: list[str] = []
    total = 0
    failures: list[str] = []
    for index in range(min(page_count, limits.max_pages)):
        try:
            page_text = pages[index].extract_text() or ""
        except Exception as exc:  # noqa: BLE001 - one bad page must not lose the others
            failures.append(f"page {index + 1}: {_describe(exc)}")
            continue
        texts.append(page_text)
        total += len(page_text)
        if total >= limits.max_chars:
            break
    if failures and not texts:
        raise ExtractionError(f"the PDF file is damaged: {failures[0]}")
    if failures:
        log.warning("some PDF pages could not be read", extra={"failed_pages": failures[:10]})
    return "\n\n".join(texts)


def _decrypt_with_empty_password(reader: PdfReader) -> None:
    try:
        result = reader.decrypt("")
    except DependencyError as exc:
        raise ExtractionError(f"the PDF file is encrypted with an unsupported method: {exc}") from exc
    except Exception as exc:
        raise ExtractionError(f"the PDF file is encrypted and could not be opened: {_describe(exc)}") from exc
    if not result:  # PasswordType.NOT_DECRYPTED
        raise ExtractionError(_ENCRYPTED)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    return text[:300]
