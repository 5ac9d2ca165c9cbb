"""Search snippets arrive as HTML (escaped text with `<mark>` around matches). They are
rebuilt here from text: every piece between the marks is unescaped and escaped again, and
only the exact `<mark>`/`</mark>` tags survive, so a fault upstream can never inject markup."""
from __future__ import annotations

import html
import re

from markupsafe import Markup, escape

_MARK = re.compile(r"(</?mark>)")


def safe_snippet(snippet: str) -> Markup:
    out: list[str] = []
    open_mark = False
    for part in _MARK.split(snippet or ""):
        if part == "<mark>" and not open_mark:
            out.append("<mark>")
            open_mark = True
        elif part == "</mark>" and open_mark:
            out.append("</mark>")
            open_mark = False
        elif part not in ("<mark>", "</mark>"):
            out.append(str(escape(html.unescape(part))))
    if open_mark:
        out.append("</mark>")
    return Markup("".join(out))
