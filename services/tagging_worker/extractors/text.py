"""Plain text: BOM-aware, strict UTF-8 first, then Korean legacy encodings, then detection.

EUC-KR input is decoded as CP949 (a superset), so files that a Korean Windows
editor saved with extended Hangul syllables decode too.
"""
from __future__ import annotations

import codecs

from charset_normalizer import from_bytes

from .errors import ExtractionError

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),   # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Encodings charset-normalizer may name for Korean text; all are decoded as CP949.
_KOREAN_LEGACY = {"cp949", "euc_kr", "ks_c_5601_1987", "uhc", "ms949", "windows_949"}
# Bytes that never occur in text (besides NUL): C0 controls other than tab, LF, VT, FF, CR, ESC.
_BINARY_BYTES = frozenset(range(0x00, 0x09)) | frozenset(range(0x0E, 0x1B)) | frozenset(range(0x1C, 0x20))


def decode_text(data: bytes) -> str:
    """Bytes of a text file → str. Raises ExtractionError("not a text file") for binary data."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom):].decode(encoding)
            except UnicodeDecodeError as exc:
                raise ExtractionError(f"not a text file: invalid {encoding.upper()} after its byte order mark") from exc
    if _looks_binary(data):
        raise ExtractionError("not a text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    korean = _try_cp949(data)
    if korean is not None:
        return korean
    best = from_bytes(data).best()
    if best is None or best.encoding is None:
        raise ExtractionError("not a text file: the character encoding could not be recognised")
    encoding = "cp949" if best.encoding.lower() in _KOREAN_LEGACY else best.encoding
    try:
        return data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        raise ExtractionError("not a text file: the character encoding could not be recognised") from exc


def _looks_binary(data: bytes) -> bool:
    sample = data[:65536]
    if b"\x00" in sample:
        return True
    controls = sum(1 for b in sample if b in _BINARY_BYTES)
    return controls > max(2, len(sample) // 100)


def _try_cp949(data: bytes) -> str | None:
    """CP949 when the bytes decode strictly and the non-ASCII characters are mostly Korean.

    The plausibility check keeps Latin-1/Windows-1252 or Shift-JIS text that happens
    to be valid CP949 byte pairs from being read as Hangul.
    """
    try:
        text = data.decode("cp949")
    except UnicodeDecodeError:
        return None
    non_ascii = [c for c in text if ord(c) > 0x7F]
    if not non_ascii:
        return text
    korean = sum(1 for c in non_ascii if _is_korean_char(c))
    return text if korean >= 0.6 * len(non_ascii) else None


def _is_korean_char(c: str) -> bool:
    cp = ord(c)
    return (0xAC00 <= cp <= 0xD7A3        # Hangul syllables
            or 0x3130 <= cp <= 0x318F     # Hangul compatibility jamo
            or 0x1100 <= cp <= 0x11FF     # Hangul jamo
            or 0x3000 <= cp <= 0x303F     # CJK punctuation (「」, 、 ...)
            or 0x3200 <= cp <= 0x32FF     # circled Hangul / CJK letters
            or 0x4E00 <= cp <= 0x9FFF     # Hanja
            or 0xFF00 <= cp <= 0xFFEF     # full-width forms
            or 0x2000 <= cp <= 0x206F     # general punctuation (“ ” … ※ ...)
            or 0x2460 <= cp <= 0x24FF     # circled numbers / letters
            or 0x2500 <= cp <= 0x25FF)    # box drawing, geometric shapes (□ ○ ■)
