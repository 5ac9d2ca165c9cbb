"""HWPX text: the XML format of 한글 (Hancom Office Hangul) 2010 and later.

HWPX is OWPML (Open Word-Processor Markup Language, KS X 6101), a ZIP package in the manner of
EPUB/ODF: a `mimetype` entry holding "application/hwp+zip", `Contents/content.hpf` (an OPF
package whose manifest names the parts and whose spine gives their order), `Contents/header.xml`
(styles) and one `Contents/section0.xml`, `section1.xml` ... per section.

Text is in `hp:t` elements ("hp" = http://www.hancom.co.kr/hwpml/2011/paragraph) inside
`hp:run`s of `hp:p` paragraphs. Tables (`hp:tbl` → `hp:tr` → `hp:tc` → `hp:subList`), text in
shapes (`hp:drawText`), headers, footers and notes hold further `hp:p` paragraphs nested in
the run that anchors them; they are read where they stand, one line per paragraph, so a
paragraph that anchors a table is split around it. Inside `hp:t`, `hp:tab` is a tab,
`hp:lineBreak` a line break; other marks (`hp:markpenBegin` ...) carry no text.

The package is untrusted: the number of entries, the unpacked size of the parts read (capped
by `Limits.max_unpacked_bytes`) and their compression ratio are bounded, and the XML is parsed
without DTDs, entity expansion or network access; a document type declaration is refused.
"""
from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath

from lxml import etree

from .errors import ExtractionError
from .limits import Limits
from .markup import SAFE_XML_PARSER
from .zip_package import MAX_ENTRIES, ratio_problem

MIMETYPE = "application/hwp+zip"
PACKAGE = "Contents/content.hpf"
MANIFEST = "META-INF/manifest.xml"

ENCRYPTED = "the HWPX file is encrypted (password-protected); remove the password and upload it again"

_SECTION = re.compile(r"Contents/section(\d+)\.xml")
# Elements of OWPML's paragraph namespaces (2011, and the 2016 extensions): {namespace}local-name.
_PARAGRAPH_TAG = re.compile(r"\{http://www\.hancom\.co\.kr/hwpml/\d{4}/paragraph\}(\w+)")
_OPF = "{http://www.idpf.org/2007/opf/}"
_INLINE_TEXT = {"tab": "\t", "lineBreak": "\n", "hyphen": "-", "nbSpace": "\u00a0", "fwSpace": " "}


@dataclass(frozen=True)
class HwpxDocument:
    text: str             # paragraphs separated by "\n" (not yet normalised)
    title: str | None     # the package's opf:title, when it has one
    sections: int         # section parts read


def read_hwpx(data: bytes, limits: Limits) -> HwpxDocument:
    """The text and metadata of an HWPX file, or ExtractionError saying why it cannot be read."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return _read_package(archive, limits)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as exc:
        raise ExtractionError(f"the HWPX file is damaged: not a complete ZIP archive ({exc})"[:400]) from exc


def _read_package(archive: zipfile.ZipFile, limits: Limits) -> HwpxDocument:
    entries = archive.infolist()
    if len(entries) > MAX_ENTRIES:  # parts are read one by one against a shared byte budget
        raise ExtractionError(f"the HWPX file has too many parts ({len(entries)}; at most {MAX_ENTRIES})")
    by_name = {info.filename: info for info in entries}
    if MANIFEST in by_name and b"encryption-data" in _read_part(archive, by_name[MANIFEST], _Budget(1024 * 1024)):
        raise ExtractionError(ENCRYPTED)

    budget = _Budget(limits.max_unpacked_bytes)
    title: str | None = None
    spine: list[str] = []
    if PACKAGE in by_name:
        package = _parse(_read_part(archive, by_name[PACKAGE], budget), PACKAGE)
        title = _package_title(package)
        spine = [name for name in _spine_parts(package) if _SECTION.fullmatch(name) and name in by_name]
    sections = spine or _numbered_sections(by_name)
    if not sections:
        raise ExtractionError("not a valid HWPX file: the archive has no Contents/section0.xml")

    lines: list[str] = []
    chars = 0
    for name in sections:
        root = _parse(_read_part(archive, by_name[name], budget), name)
        start = len(lines)
        parts: list[str] = []
        _collect(root, parts, lines)
        _end_line(parts, lines)
        chars += sum(len(line) + 1 for line in lines[start:])
        if chars >= limits.max_chars:
            break
    return HwpxDocument(text="\n".join(lines), title=title, sections=len(sections))


def _numbered_sections(by_name: dict[str, zipfile.ZipInfo]) -> list[str]:
    """Contents/sectionN.xml in section order (section10 after section9), for packages without a spine."""
    numbered = [(int(match.group(1)), name) for name in by_name if (match := _SECTION.fullmatch(name))]
    return [name for _, name in sorted(numbered)]


# -- reading parts safely ----------------------------------------------------------------------


class _Budget:
    """Bytes the parts read may still unpack to, shared by all of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit


def _read_part(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget) -> bytes:
    too_large = (f"the HWPX file is too large when unpacked (over {budget.limit} bytes); "
                 "it may be a compression bomb")
    if info.file_size > budget.left:
        raise ExtractionError(too_large)
    if (problem := ratio_problem(info, "HWPX")) is not None:
        raise ExtractionError(problem)
    try:
        with archive.open(info) as part:
            data = part.read(budget.left + 1)  # never more than the budget, whatever the header says
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, RuntimeError, OSError) as exc:
        # RuntimeError: an entry encrypted with a ZIP password; the others: damaged data
        raise ExtractionError(f"the HWPX file is damaged: {info.filename} cannot be read ({exc})"[:400]) from exc
    if len(data) > budget.left:
        raise ExtractionError(too_large)
    budget.left -= len(data)
    return data


def _parse(data: bytes, name: str) -> etree._Element:
    try:
        root = etree.fromstring(data, SAFE_XML_PARSER)
    except etree.XMLSyntaxError as exc:
        raise ExtractionError(f"the HWPX file is damaged: invalid XML in {name} ({exc})"[:400]) from exc
    if root.getroottree().docinfo.doctype:
        raise ExtractionError(f"the HWPX file is not valid: {name} has a document type declaration")
    return root


# -- package and section XML -------------------------------------------------------------------


def _spine_parts(package: etree._Element) -> list[str]:
    """Part names in the order of the OPF spine (hrefs are relative to the package root)."""
    hrefs = {item.get("id"): item.get("href") for item in package.iter(f"{_OPF}item")}
    names: list[str] = []
    for ref in package.iter(f"{_OPF}itemref"):
        href = hrefs.get(ref.get("idref"))
        if href:
            names.append(str(PurePosixPath(href)))
    return names


def _package_title(package: etree._Element) -> str | None:
    for element in package.iter(f"{_OPF}title"):
        return (element.text or "").strip() or None
    return None


def _collect(element: etree._Element, parts: list[str], lines: list[str]) -> None:
    """Appends the paragraphs under `element` to `lines` in document order.

    `parts` is the text gathered so far of the paragraph being read; a nested paragraph (a
    table cell, a text box) ends that line, and the rest of the outer paragraph starts a new one.
    """
    for child in element.iterchildren():
        name = _paragraph_name(child)
        if name == "p":
            _end_line(parts, lines)
            _collect(child, parts, lines)
            _end_line(parts, lines)
        elif name == "t":
            parts.append(_run_text(child))
        else:
            _collect(child, parts, lines)


def _end_line(parts: list[str], lines: list[str]) -> None:
    if parts:
        lines.append("".join(parts))
        parts.clear()


def _run_text(t: etree._Element) -> str:
    """The text of one hp:t: its own text, inline marks (tab, line break ...) and their tails."""
    pieces = [t.text or ""]
    for child in t.iterchildren():
        name = _paragraph_name(child)
        pieces.append(_INLINE_TEXT.get(name or "", ""))
        pieces.append(child.tail or "")
    return "".join(pieces)


def _paragraph_name(element: etree._Element) -> str | None:
    """The local name of an element of an OWPML paragraph namespace; None for anything else."""
    if not isinstance(element.tag, str):
        return None
    match = _PARAGRAPH_TAG.fullmatch(element.tag)
    return match.group(1) if match else None
