"""HWP 5.0 text: the binary format of 한글 (Hancom Office Hangul) 2002 and later.

An HWP 5.0 file is an OLE compound file (read with `olefile`). Everything below follows
Hancom's published specification, "한글 문서 파일 형식 5.0" (hwp 5.0 file format, revision 1.3):

- Stream `FileHeader` ("파일 인식 정보"): a 32-byte signature starting "HWP Document File",
  the version as a DWORD 0xMMnnPPrr, then a DWORD of properties: bit 0 the body is
  compressed, bit 1 a password is set, bit 2 distribution document (배포용 문서), bit 4 DRM,
  bit 8 encrypted with a certificate.
- Streams `BodyText/Section0`, `Section1`, ... ("본문"): one per section, raw deflate (no zlib
  header: wbits=-15) when bit 0 is set. A section is a sequence of records ("데이터 레코드"):
  a DWORD header with the tag id in bits 0-9, the level in bits 10-19 and the size in bits
  20-31; a size of 0xFFF means the real size follows in the next DWORD.
- HWPTAG_PARA_TEXT (HWPTAG_BEGIN + 51 = 67, "문단의 텍스트") holds one paragraph's text in
  UTF-16LE. Codes 0-31 are control characters ("제어 문자"): "char" controls take one UTF-16
  unit (10 line break, 13 paragraph end, 24 hyphen, 30 non-breaking space, 31 fixed-width
  space, others reserved); "inline" (4-9, 19-20; 9 is a tab) and "extended" controls (1-3,
  11-18, 21-23: tables, drawing objects, headers/footers, footnotes ...) take eight units:
  the code, six units of parameters (for extended ones the id of a control record) and the
  code again.
- Table cells, text boxes, headers/footers, footnotes and endnotes are paragraphs nested under
  the control records of the same section stream, so every PARA_TEXT record read in stream
  order gives the body text with all of them, in document order.
- Distribution documents ("배포용 문서"): the body is in `ViewText/Section*` instead. Each
  stream starts with an HWPTAG_DISTRIBUTE_DOC_DATA record (HWPTAG_BEGIN + 12 = 28) of 256
  bytes: its first 4 bytes seed the `srand`/`rand` generator of Microsoft Visual C, whose
  numbers XOR-decode the rest of the 256 bytes (a random byte used for a random run of 1-16
  bytes); the 16 bytes at offset 4 + (seed & 0x0F) of the decoded data are an AES-128 key.
  The rest of the stream is AES-128-ECB encrypted and, once decrypted, is compressed and
  made of records like a BodyText section.
- Stream `\\x05HwpSummaryInformation` ("문서 요약"): an OLE property set (MS-OLEPS); the title
  is property 2 (PIDSI_TITLE), a VT_LPWSTR string.

Password-protected, DRM and certificate-encrypted documents are refused with a reason, never
read as garbage. Every length read from the file is checked against what is really there,
and the decompressed size of the sections is capped by `Limits.max_unpacked_bytes`.
"""
from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import olefile
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .errors import ExtractionError
from .limits import Limits

SIGNATURE = b"HWP Document File"
FILE_HEADER = "FileHeader"
SUMMARY_STREAM = "\x05HwpSummaryInformation"

# FileHeader properties (bit flags).
FLAG_COMPRESSED = 1 << 0
FLAG_PASSWORD = 1 << 1
FLAG_DISTRIBUTION = 1 << 2
FLAG_DRM = 1 << 4
FLAG_CERTIFICATE_ENCRYPTION = 1 << 8
FLAG_CERTIFICATE_DRM = 1 << 10

HWPTAG_BEGIN = 0x10
HWPTAG_DISTRIBUTE_DOC_DATA = HWPTAG_BEGIN + 12
HWPTAG_PARA_TEXT = HWPTAG_BEGIN + 51
DISTRIBUTE_DOC_DATA_SIZE = 256

# PARA_TEXT control characters that take eight UTF-16 units (inline and extended controls).
EIGHT_UNIT_CONTROLS = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23})
# What the controls that stand for text become; every other one (13, the paragraph end, too) is dropped.
CONTROL_TEXT = {9: "\t", 10: "\n", 24: "-", 30: "\u00a0", 31: " "}

ENCRYPTED = "the HWP file is encrypted (password-protected); remove the password and upload it again"
DISTRIBUTION_FAILED = "the HWP file is distribution-protected (배포용) and its text could not be decoded"

_SECTION_NAME = re.compile(r"Section(\d+)")


@dataclass(frozen=True)
class HwpDocument:
    text: str             # paragraphs separated by "\n" (not yet normalised)
    title: str | None     # from HwpSummaryInformation, when it has one
    sections: int         # section streams in the file
    version: str          # "5.0.1.7"
    distribution: bool    # read from the encrypted ViewText streams


def read_hwp(data: bytes, limits: Limits) -> HwpDocument:
    """The text and metadata of an HWP 5.0 file, or ExtractionError saying why it cannot be read."""
    if not data.startswith(olefile.MAGIC):  # detect.py has told HWP 3.0 files apart already
        raise ExtractionError("not a valid HWP file: the content is not an HWP 5.0 (OLE compound) file")
    try:
        # DEFECT_INCORRECT: a FAT or directory that loops or points outside the file is an error.
        ole = olefile.OleFileIO(io.BytesIO(data), raise_defects=olefile.DEFECT_INCORRECT)
    except Exception as exc:  # olefile raises OSError, struct.error, IndexError ... on broken files
        raise ExtractionError(f"the HWP file is damaged: {_describe(exc)}") from exc
    try:
        return _read_document(ole, limits)
    finally:
        ole.close()


def _read_document(ole: olefile.OleFileIO, limits: Limits) -> HwpDocument:
    if not ole.exists(FILE_HEADER):
        raise ExtractionError("not a valid HWP file: an OLE compound file without an HWP FileHeader "
                              "(a Word .doc, Excel .xls or similar)")
    header = _read_stream(ole, FILE_HEADER)
    if len(header) < 40 or not header.startswith(SIGNATURE):
        raise ExtractionError("not a valid HWP file: its FileHeader has no HWP signature")
    version_word, flags = struct.unpack_from("<II", header, 32)
    version = ".".join(str(version_word >> shift & 0xFF) for shift in (24, 16, 8, 0))
    if version_word >> 24 != 5:
        raise ExtractionError(f"unsupported HWP version {version}: only HWP 5.x files can be read")
    if flags & FLAG_PASSWORD:
        raise ExtractionError(ENCRYPTED)
    if flags & (FLAG_DRM | FLAG_CERTIFICATE_DRM):
        raise ExtractionError("the HWP file is protected by DRM; upload an unprotected copy")
    if flags & FLAG_CERTIFICATE_ENCRYPTION:
        raise ExtractionError("the HWP file is encrypted with a certificate; upload an unprotected copy")
    distribution = bool(flags & FLAG_DISTRIBUTION)
    compressed = bool(flags & FLAG_COMPRESSED)

    sections = _section_streams(ole, "ViewText" if distribution else "BodyText")
    if not sections:
        if distribution:
            raise ExtractionError(f"{DISTRIBUTION_FAILED}: it has no ViewText sections")
        raise ExtractionError("the HWP file is damaged: it has no BodyText sections")

    budget = _Budget(limits.max_unpacked_bytes)
    paragraphs: list[str] = []
    chars = 0
    for stream in sections:
        raw = _read_stream(ole, stream)
        try:
            if distribution:
                raw = _decrypt_view_text(raw)
            body = _inflate(raw, budget, stream) if compressed else raw
            for payload in _para_text_records(body, stream):
                text = paragraph_text(payload)
                paragraphs.append(text)
                chars += len(text) + 1
                if chars >= limits.max_chars:
                    break
        except _TooLarge as exc:  # a bomb is a bomb, distribution document or not
            raise ExtractionError(str(exc)) from None
        except ExtractionError as exc:
            if distribution:
                raise ExtractionError(f"{DISTRIBUTION_FAILED}: {exc.reason}") from None
            raise
        if chars >= limits.max_chars:
            break
    return HwpDocument(text="\n".join(paragraphs), title=_summary_title(ole), sections=len(sections),
                       version=version, distribution=distribution)


def _section_streams(ole: olefile.OleFileIO, storage: str) -> list[str]:
    """"Storage/SectionN" stream names in section order (Section10 after Section9)."""
    numbered: list[tuple[int, str]] = []
    for path in ole.listdir(streams=True, storages=False):
        if len(path) == 2 and path[0] == storage:
            match = _SECTION_NAME.fullmatch(path[1])
            if match:
                numbered.append((int(match.group(1)), "/".join(path)))
    return [name for _, name in sorted(numbered)]


def _read_stream(ole: olefile.OleFileIO, name: str) -> bytes:
    try:
        with ole.openstream(name) as stream:
            data: bytes = stream.read()
    except Exception as exc:  # a sector chain that loops or leaves the file
        raise ExtractionError(f"the HWP file is damaged: stream {name} cannot be read ({_describe(exc)})") from exc
    return data


# -- compression -------------------------------------------------------------------------------


class _TooLarge(Exception):
    """The sections unpack to more than the limit: a compression bomb, or simply too big."""


class _Budget:
    """Bytes the file's sections may still unpack to, shared by all of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def take(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise _TooLarge(f"the HWP file is too large when decompressed (over {self.limit} bytes); "
                            "it may be a compression bomb")


def _inflate(raw: bytes, budget: _Budget, stream: str) -> bytes:
    """Raw deflate data → bytes, never producing more than the budget allows."""
    inflater = zlib.decompressobj(-15)
    out = bytearray()
    pending = raw
    try:
        while not inflater.eof:
            # max_length bounds each step; one byte over the budget is enough to know it is exceeded.
            chunk = inflater.decompress(pending, budget.left + 1)
            budget.take(len(chunk))
            out += chunk
            pending = inflater.unconsumed_tail
            if not chunk and not pending:
                break  # input used up before the end of the deflate stream
    except zlib.error as exc:
        raise ExtractionError(f"the HWP file is damaged: {stream} is not valid compressed data ({exc})") from exc
    if not inflater.eof:
        raise ExtractionError(f"the HWP file is damaged: {stream} is truncated")
    return bytes(out)


# -- records -----------------------------------------------------------------------------------


def _para_text_records(body: bytes, stream: str) -> Iterator[bytes]:
    """The payload of every HWPTAG_PARA_TEXT record of a section, in stream order."""
    pos, end = 0, len(body)
    while pos < end:
        if end - pos < 4:
            if not any(body[pos:]):
                return  # zero padding after the last record
            raise ExtractionError(f"the HWP file is damaged: {stream} ends inside a record header")
        (header,) = struct.unpack_from("<I", body, pos)
        pos += 4
        tag, size = header & 0x3FF, header >> 20
        if size == 0xFFF:
            if end - pos < 4:
                raise ExtractionError(f"the HWP file is damaged: {stream} ends inside a record header")
            (size,) = struct.unpack_from("<I", body, pos)
            pos += 4
        if size > end - pos:
            raise ExtractionError(f"the HWP file is damaged: a record in {stream} is truncated "
                                  f"({size} bytes announced, {end - pos} left)")
        if tag == HWPTAG_PARA_TEXT:
            yield body[pos:pos + size]
        pos += size


def paragraph_text(payload: bytes) -> str:
    """The text of one PARA_TEXT record, its control characters resolved (the paragraph end dropped)."""
    count = len(payload) // 2
    units = struct.unpack(f"<{count}H", payload[:2 * count])
    parts: list[str] = []
    start = i = 0
    while i < count:
        code = units[i]
        if code >= 32:
            i += 1
            continue
        parts.append(payload[2 * start:2 * i].decode("utf-16-le", "surrogatepass"))
        parts.append(CONTROL_TEXT.get(code, ""))
        i += 8 if code in EIGHT_UNIT_CONTROLS else 1
        start = i
    parts.append(payload[2 * start:2 * count].decode("utf-16-le", "surrogatepass"))
    return "".join(parts)


# -- distribution documents --------------------------------------------------------------------


class MsvcRandom:
    """`srand(seed)` / `rand()` of the Microsoft Visual C runtime (a linear congruential generator)."""

    def __init__(self, seed: int) -> None:
        self.state = seed & 0xFFFFFFFF

    def rand(self) -> int:
        self.state = (self.state * 214013 + 2531011) & 0xFFFFFFFF
        return (self.state >> 16) & 0x7FFF


def distribution_key(doc_data: bytes) -> bytes:
    """The AES-128 key hidden in the 256 bytes of a DISTRIBUTE_DOC_DATA record."""
    decoded = bytearray(doc_data)
    (seed,) = struct.unpack_from("<I", decoded, 0)
    random = MsvcRandom(seed)
    key_byte, run = 0, 0
    for i in range(DISTRIBUTE_DOC_DATA_SIZE):
        if run == 0:
            key_byte = random.rand() & 0xFF
            run = (random.rand() & 0x0F) + 1
        if i >= 4:  # the seed itself is stored as it is
            decoded[i] ^= key_byte
        run -= 1
    offset = 4 + (seed & 0x0F)
    return bytes(decoded[offset:offset + 16])


def _decrypt_view_text(raw: bytes) -> bytes:
    """A ViewText section stream → the (still compressed) records of the section."""
    if len(raw) < 4 + DISTRIBUTE_DOC_DATA_SIZE:
        raise ExtractionError("the section is too short to hold its key record")
    (header,) = struct.unpack_from("<I", raw, 0)
    if header & 0x3FF != HWPTAG_DISTRIBUTE_DOC_DATA or header >> 20 != DISTRIBUTE_DOC_DATA_SIZE:
        raise ExtractionError("the section does not start with a DISTRIBUTE_DOC_DATA record")
    key = distribution_key(raw[4:4 + DISTRIBUTE_DOC_DATA_SIZE])
    encrypted = raw[4 + DISTRIBUTE_DOC_DATA_SIZE:]
    if len(encrypted) % 16:
        raise ExtractionError("the encrypted section is not a whole number of AES blocks")
    # ECB is what the format prescribes; this only reads files, it protects nothing.
    decryptor = Cipher(algorithms.AES(key), modes.ECB()).decryptor()
    return decryptor.update(encrypted) + decryptor.finalize()


# -- summary information -----------------------------------------------------------------------

PIDSI_TITLE = 2
VT_LPSTR = 0x1E
VT_LPWSTR = 0x1F


def _summary_title(ole: olefile.OleFileIO) -> str | None:
    """The document title from HwpSummaryInformation; None when absent, empty or unreadable."""
    if not ole.exists(SUMMARY_STREAM):
        return None
    try:
        return property_set_title(_read_stream(ole, SUMMARY_STREAM))
    except ExtractionError:
        return None


def property_set_title(data: bytes) -> str | None:
    """PIDSI_TITLE of the first property set of an MS-OLEPS property set stream."""
    try:
        # PropertySetHeader: 28 bytes, then FMTID (16 bytes) and offset of the first set.
        (offset,) = struct.unpack_from("<I", data, 44)
        (count,) = struct.unpack_from("<I", data, offset + 4)
        for index in range(min(count, 1024)):
            prop_id, prop_offset = struct.unpack_from("<II", data, offset + 8 + 8 * index)
            if prop_id != PIDSI_TITLE:
                continue
            start = offset + prop_offset
            value_type, length = struct.unpack_from("<II", data, start)
            if value_type == VT_LPWSTR:
                value = data[start + 8:start + 8 + 2 * length].decode("utf-16-le", "replace")
            elif value_type == VT_LPSTR:
                value = data[start + 8:start + 8 + length].decode("cp949", "replace")
            else:
                return None
            return value.split("\x00", 1)[0].strip() or None
    except struct.error:
        return None
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    return text[:300]
