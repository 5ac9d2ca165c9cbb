"""Bounds on the work one extraction may do."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_pages: int = 1000          # PDF pages read; later pages are ignored
    max_chars: int = 2_000_000     # extracted text is cut here
