"""HTML and XML files: their visible text.

The bytes are decoded like any text file (text.py: BOM, UTF-8, CP949/EUC-KR from the content),
so a Korean page saved as EUC-KR reads right whatever its `<meta charset>` claims. The parsers
never fetch anything and never expand entities:

- HTML: lxml's HTML parser (libxml2), without network access; `<script>`, `<style>` and
  `<template>` are dropped (never shown); block elements and `<br>` become line breaks, table
  cells tabs, and whitespace is collapsed as a browser does (kept inside `<pre>`). HTML's own
  named entities (`&nbsp;`, `&middot;`) are part of HTML and are decoded.
- XML: no DTD is loaded and entities declared in one are not expanded (their references are
  left out): a "billion laughs" file costs nothing. Elements are lines, except inside mixed
  content, where they are words or parts of words.

The tree is walked with `iterwalk`, not recursion, so deeply nested markup cannot exhaust the
stack. Comments and processing instructions are removed by the parsers.
"""
from __future__ import annotations

import re

import lxml.html
from lxml import etree

from .errors import ExtractionError
from .text import decode_text

_XML_DECLARATION = re.compile(r"\A\s*<\?xml[^>]*\?>")
_WHITESPACE = re.compile(r"[ \t\r\n\f]+")
_DROPPED = frozenset({"script", "style", "template", "noscript"})
_BLOCKS = frozenset({
    "address", "article", "aside", "blockquote", "body", "caption", "dd", "details", "div", "dl", "dt",
    "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header",
    "hr", "legend", "main", "nav", "ol", "p", "pre", "section", "summary", "table", "tbody",
    "tfoot", "thead", "title", "ul",
})
_LINES = frozenset({"br", "dd", "dt", "li", "tr"})  # a line of their own, no blank line between them
_CELLS = frozenset({"td", "th"})

_HTML_PARSER = lxml.html.HTMLParser(remove_comments=True, remove_pis=True, no_network=True)
# For XML from uploads (here and in hwpx.py): no DTD, no entity expansion, no network, no huge trees.
SAFE_XML_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                                  huge_tree=False, remove_comments=True, remove_pis=True)


def extract_html(data: bytes) -> str:
    """The visible text of an HTML page (its `<title>` first)."""
    source = _XML_DECLARATION.sub("", decode_text(data), count=1)  # lxml refuses str with an encoding declaration
    if not source.strip():
        return ""
    try:
        root = lxml.html.document_fromstring(source, parser=_HTML_PARSER)
    except (etree.ParserError, etree.XMLSyntaxError, ValueError) as exc:
        raise ExtractionError(f"the HTML file could not be read: {_describe(exc)}") from exc
    # The HTML parser recovers from every error but a fatal one (nesting deeper than 256
    # elements, a text run over 10 MB), where it silently stops: say so rather than return
    # part of the page, or nothing.
    fatal = [error for error in _HTML_PARSER.error_log if error.level_name == "FATAL"]
    if fatal:
        raise ExtractionError(_failure("HTML", fatal[0].message))
    return _html_text(root)


def extract_xml(data: bytes) -> str:
    """The text nodes of an XML document, one a line, in document order."""
    source = _XML_DECLARATION.sub("", decode_text(data), count=1)
    if not source.strip():
        return ""
    try:
        root = etree.fromstring(source.encode("utf-8"), parser=SAFE_XML_PARSER)
    except etree.XMLSyntaxError as exc:
        raise ExtractionError(_failure("XML", str(exc))) from exc
    return _xml_text(root)


def _xml_text(root: etree._Element) -> str:
    """Text nodes in document order. An element inside mixed content (`<p>행정<b>안전</b>부</p>`)
    joins its text to its neighbours' so words stay whole; any other element is its own line
    (`<item>가</item><item>나</item>`). Entity references (not expanded) are left out."""
    parts: list[str] = []
    mixed: dict[etree._Element, bool] = {}
    for event, element in etree.iterwalk(root, events=("start", "end")):
        parent = element.getparent()
        if parent is not None and parent not in mixed:   # once per parent: its children are many
            mixed[parent] = _has_own_text(parent)
        inline = parent is not None and mixed[parent]
        if not inline and not isinstance(element, etree._Entity):
            parts.append("\n")
        if event == "start" and element.text and not isinstance(element, etree._Entity):
            parts.append(element.text)
        if event == "end" and element.tail:
            parts.append(element.tail)
    lines = (_WHITESPACE.sub(" ", line).strip() for line in "".join(parts).split("\n"))
    return "\n".join(line for line in lines if line)


def _has_own_text(element: etree._Element) -> bool:
    """Whether the element has text of its own between its children (mixed content)."""
    return bool((element.text or "").strip()) or any((child.tail or "").strip() for child in element)


def _html_text(root: lxml.html.HtmlElement) -> str:
    parts: list[str] = []
    in_pre = 0
    walker = etree.iterwalk(root, events=("start", "end"))
    for event, element in walker:
        tag = element.tag.lower() if isinstance(element.tag, str) else ""
        if event == "start":
            if tag in _DROPPED:
                walker.skip_subtree()  # its "end" still comes, for the tail
                continue
            if tag == "pre":
                in_pre += 1
            if tag in _BLOCKS or tag in _LINES:
                parts.append("\n")
            elif tag in _CELLS:
                parts.append("\t")
            if element.text:
                parts.append(element.text if in_pre else _WHITESPACE.sub(" ", element.text))
        else:
            if tag == "pre":
                in_pre -= 1
            if tag in _BLOCKS:
                parts.append("\n")
            if element.tail:
                parts.append(element.tail if in_pre else _WHITESPACE.sub(" ", element.tail))
    # Cells of a row are separated by tabs; a line's leading and trailing blanks are layout.
    return "\n".join(line.strip(" \t") for line in "".join(parts).split("\n"))


def _describe(exc: BaseException) -> str:
    return (str(exc).strip() or exc.__class__.__name__)[:300]


def _failure(kind: str, message: str) -> str:
    """The reason for a parser error; libxml2's resource limits are named as such, without its
    advice to turn them off (XML_PARSE_HUGE), which is meant for programmers."""
    if "XML_PARSE_HUGE" in message:
        limit = re.split(r",? (?:use|try) XML_PARSE_HUGE", message)[0]
        return f"the {kind} file is too deeply nested or too large to read ({limit})"[:400]
    if kind == "XML":
        return f"not a well-formed XML file: {message}"[:400]
    return f"the HTML file could not be read: {message}"[:400]
