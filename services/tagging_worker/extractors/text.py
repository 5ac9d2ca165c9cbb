"""Plain text: BOM-aware, strict UTF-8 first, then Korean legacy encodings, then detection.

EUC-KR input is decoded as CP949 (a superset), so files that a Korean Windows
editor saved with extended Hangul syllables decode too. EUC-KR (KS X 1001) can only
write the 2,350 most common syllables; others are written as a make-up sequence of
four characters: the Hangul filler, an initial, a medial and a final jamo (filler for
none), e.g. ㅤㅆㅠㅤ for 쓔. Python's CP949 codec keeps the four jamo, so they are
composed into the syllable here (KS X 1001:2004 annex 3), for every decoded text.

A file with NUL bytes is not text (NUL never occurs in text in these encodings; UTF-16
and UTF-32 are recognised by their byte order mark).
"""
from __future__ import annotations

import codecs
import re

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
    if b"\x00" in data:
        raise ExtractionError("not a text file: it contains NUL bytes (binary data)")
    if _looks_binary(data):
        raise ExtractionError("not a text file")
    return compose_makeup_sequences(_decode_without_bom(data))


def _decode_without_bom(data: bytes) -> str:
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


# -- KS X 1001 make-up sequences ---------------------------------------------------------------

FILLER = "\u3164"  # HANGUL FILLER, KS X 1001 0xA4D4
# Compatibility jamo (KS X 1001 row 4) in the order of the Unicode syllable arithmetic.
_INITIALS = "ㄱㄲㄴㄷㄸㄹㅁㅂㅃㅅㅆㅇㅈㅉㅊㅋㅌㅍㅎ"
_MEDIALS = "ㅏㅐㅑㅒㅓㅔㅕㅖㅗㅘㅙㅚㅛㅜㅝㅞㅟㅠㅡㅢㅣ"
_FINALS = "ㄱㄲㄳㄴㄵㄶㄷㄹㄺㄻㄼㄽㄾㄿㅀㅁㅂㅄㅅㅆㅇㅈㅊㅋㅌㅍㅎ"  # index + 1; 0 = no final
_MAKEUP = re.compile(FILLER + "([\u3131-\u314e\u3164])([\u314f-\u3163\u3164])([\u3131-\u314e\u3164])")


def compose_makeup_sequences(text: str) -> str:
    """Filler + initial + medial + final (each part a jamo or the filler) → the syllable.

    Initial + medial (+ final) compose by the Unicode arithmetic
    0xAC00 + (initial × 21 + medial) × 28 + final. A lone initial (ㅤㄱㅤㅤ) or a lone medial
    (ㅤㅤㅏㅤ) stands for that letter. Anything else (a final without a syllable, a
    consonant that cannot begin one) is left as it is rather than guessed.
    """
    if FILLER not in text:
        return text
    return _MAKEUP.sub(_compose, text)


def _compose(match: re.Match[str]) -> str:
    initial, medial, final = match.groups()
    if initial in _INITIALS and medial in _MEDIALS and (final == FILLER or final in _FINALS):
        final_index = 0 if final == FILLER else _FINALS.index(final) + 1
        return chr(0xAC00 + (_INITIALS.index(initial) * 21 + _MEDIALS.index(medial)) * 28 + final_index)
    if initial in _INITIALS and medial == FILLER and final == FILLER:
        return initial
    if initial == FILLER and medial in _MEDIALS and final == FILLER:
        return medial
    return match.group(0)


def _looks_binary(data: bytes) -> bool:
    sample = data[:65536]   # NUL bytes anywhere were refused before this is asked
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
