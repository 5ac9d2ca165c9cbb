"""JSON bodies parsed within bounds: size and nesting depth are checked before the
parser runs, so a small body of thousands of nested arrays answers 413/422 instead of
exhausting the recursion limit (a 500 and a dropped connection)."""
from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 32
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class JsonTooLarge(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the body may be at most {limit} bytes")
        self.limit = limit


class JsonInvalid(ValueError):
    """Not JSON, or nested deeper than allowed."""


def nesting_depth(raw: bytes) -> int:
    """The deepest nesting of arrays/objects in `raw` (brackets inside strings do not count)."""
    depth = deepest = 0
    for bracket in _STRING.sub(b'""', raw).translate(None, _NOT_BRACKETS):
        if bracket in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def loads_bounded(raw: bytes, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads` for untrusted bodies: JsonTooLarge past `max_bytes`, JsonInvalid for bad JSON or
    nesting deeper than `max_depth`."""
    if len(raw) > max_bytes:
        raise JsonTooLarge(max_bytes)
    if nesting_depth(raw) > max_depth:
        raise JsonInvalid(f"the JSON is nested deeper than {max_depth} levels")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise JsonInvalid("the body is not valid JSON") from None
