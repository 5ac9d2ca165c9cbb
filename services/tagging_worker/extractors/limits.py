"""Bounds on the work one extraction may do."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_pages: int = 1000          # PDF pages read; later pages are ignored
    max_chars: int = 2_000_000     # extracted text is cut here
    # Bytes one file may expand to when its compressed parts are unpacked (HWP section streams,
    # HWPX XML parts): a file that would unpack to more is refused as a compression bomb.
    max_unpacked_bytes: int = 128 * 1024 * 1024
