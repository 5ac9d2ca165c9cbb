"""DOCX text with python-docx: body paragraphs and tables in document order.

The body is walked as XML rather than through `Paragraph.text`, so that text in
tracked insertions (`w:ins`), hyperlinks, fields and content controls is kept,
deleted text (`w:delText`) is left out, merged table cells are not repeated and
the fallback copy of text boxes (`mc:Fallback`) is not read twice.
"""
from __future__ import annotations

import io
import zipfile

import docx
from docx.opc.exceptions import PackageNotFoundError
from lxml import etree

from .errors import ExtractionError
from .limits import Limits
from .zip_package import check_package

_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
_MC = "http://schemas.openxmlformats.org/markup-compatibility/2006"
_P, _TBL, _TR, _TC = f"{{{_W}}}p", f"{{{_W}}}tbl", f"{{{_W}}}tr", f"{{{_W}}}tc"
_T, _TAB, _BR, _CR = f"{{{_W}}}t", f"{{{_W}}}tab", f"{{{_W}}}br", f"{{{_W}}}cr"
_SDT_CONTENT = f"{{{_W}}}sdtContent"
_SKIP = {f"{{{_MC}}}Fallback", f"{{{_W}}}del", f"{{{_W}}}delText", f"{{{_W}}}instrText",
         f"{{{_W}}}pPr", f"{{{_W}}}rPr", f"{{{_W}}}tblPr", f"{{{_W}}}tcPr", f"{{{_W}}}trPr"}


def extract_docx(data: bytes, limits: Limits) -> str:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise ExtractionError(f"the DOCX file is damaged: not a complete ZIP archive ({exc})") from exc
    check_package(entries, limits.max_unpacked_bytes, "DOCX")   # python-docx unpacks every part
    if "word/document.xml" not in {info.filename for info in entries}:
        raise ExtractionError("not a valid DOCX file: the archive has no word/document.xml")
    try:
        document = docx.Document(io.BytesIO(data))
    except etree.XMLSyntaxError as exc:
        raise ExtractionError(f"the DOCX file is damaged: invalid XML ({exc})") from exc
    except (PackageNotFoundError, KeyError) as exc:
        raise ExtractionError(f"not a valid DOCX file: {exc}") from exc
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError) as exc:
        raise ExtractionError(f"the DOCX file is damaged: {exc}") from exc
    except Exception as exc:  # python-docx raises many kinds on broken parts
        raise ExtractionError(f"the DOCX file is damaged: {exc.__class__.__name__}: {exc}"[:400]) from exc

    lines: list[str] = []
    _blocks(document.element.body, lines, limits.max_chars)
    return "\n".join(lines)


def _blocks(container: etree._Element, lines: list[str], max_chars: int) -> None:
    """Appends the text of the paragraphs and tables inside `container`, in order."""
    for child in container.iterchildren():
        if sum(len(line) for line in lines) >= max_chars:
            return
        if child.tag == _P:
            lines.append(_paragraph_text(child))
        elif child.tag == _TBL:
            _table(child, lines, max_chars)
        elif child.tag in _SKIP or not isinstance(child.tag, str):
            continue
        else:  # w:sdt, w:sdtContent, w:customXml, w:ins ... wrap further blocks
            _blocks(child, lines, max_chars)


def _table(table: etree._Element, lines: list[str], max_chars: int) -> None:
    """One line per row, cells separated by tabs; a cell with several paragraphs or a
    nested table contributes its lines joined by spaces."""
    for row in table.iter(_TR):
        if _closest_table(row) is not table:
            continue  # rows of nested tables are read with their cell
        cells: list[str] = []
        for cell in row.iterchildren(_TC):
            cell_lines: list[str] = []
            _blocks(cell, cell_lines, max_chars)
            cells.append(" ".join(line for line in cell_lines if line.strip()))
        if any(cells):
            lines.append("\t".join(cells))


def _closest_table(element: etree._Element) -> etree._Element | None:
    parent = element.getparent()
    while parent is not None and parent.tag != _TBL:
        parent = parent.getparent()
    return parent


def _paragraph_text(paragraph: etree._Element) -> str:
    parts: list[str] = []
    _runs(paragraph, parts)
    return "".join(parts)


def _runs(element: etree._Element, parts: list[str]) -> None:
    for child in element.iterchildren():
        tag = child.tag
        if not isinstance(tag, str) or tag in _SKIP:
            continue
        if tag == _T:
            parts.append(child.text or "")
        elif tag == _TAB:
            parts.append("\t")
        elif tag in (_BR, _CR):
            parts.append("\n")
        elif tag == _P:  # paragraphs inside a text box within this paragraph
            parts.append("\n")
            _runs(child, parts)
        else:
            _runs(child, parts)
