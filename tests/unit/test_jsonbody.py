"""Bounded JSON parsing: depth and size are checked before the parser runs."""
from __future__ import annotations

import pytest

from services.common.jsonbody import JsonInvalid, JsonTooLarge, loads_bounded, nesting_depth


def test_depth_ignores_brackets_in_strings() -> None:
    assert nesting_depth(b'{"a": [1, {"b": "[[[[{{{{"}]}') == 3
    assert nesting_depth(b'"\\"[[["') == 0
    assert nesting_depth(b"42") == 0


def test_bounds() -> None:
    assert loads_bounded('{"이름": ["값"]}'.encode(), max_bytes=100) == {"이름": ["값"]}
    with pytest.raises(JsonInvalid):
        loads_bounded(b"[" * 8000 + b"]" * 8000, max_bytes=20_000)
    with pytest.raises(JsonInvalid):
        loads_bounded(b"[[[1]]]", max_bytes=100, max_depth=2)
    with pytest.raises(JsonTooLarge) as info:
        loads_bounded(b"[1, 2, 3]", max_bytes=4)
    assert info.value.limit == 4
    for bad in (b"", b"{", b"\xff"):
        with pytest.raises(JsonInvalid):
            loads_bounded(bad, max_bytes=100)
