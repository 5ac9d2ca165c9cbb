"""Limits for ZIP-based formats (DOCX, HWPX), checked on the archive's directory before any part
is unpacked. zipfile never unpacks a part beyond the size its header declares, so the declared
sizes bound the work; these checks refuse compression bombs before it starts."""
from __future__ import annotations

import zipfile
from collections.abc import Sequence

from .errors import ExtractionError

MAX_ENTRIES = 10_000
MAX_RATIO = 200                 # unpacked / packed size of one part ...
RATIO_MIN_SIZE = 1024 * 1024    # ... checked for parts that unpack to more than this


def ratio_problem(info: zipfile.ZipInfo, what: str) -> str | None:
    """Why one part looks like a compression bomb, or None."""
    if info.file_size > RATIO_MIN_SIZE and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        return (f"the {what} file looks like a compression bomb: {info.filename} unpacks "
                f"{info.file_size // max(info.compress_size, 1)} times its packed size")
    return None


def check_package(entries: Sequence[zipfile.ZipInfo], max_unpacked_bytes: int, what: str) -> None:
    """Refuses a package with too many parts, a part packed too tightly, or more declared bytes
    than `max_unpacked_bytes` in all."""
    if len(entries) > MAX_ENTRIES:
        raise ExtractionError(f"the {what} file has too many parts ({len(entries)}; at most {MAX_ENTRIES})")
    for info in entries:
        if (problem := ratio_problem(info, what)) is not None:
            raise ExtractionError(problem)
    if sum(info.file_size for info in entries) > max_unpacked_bytes:
        raise ExtractionError(f"the {what} file is too large when unpacked (over {max_unpacked_bytes} bytes); "
                              "it may be a compression bomb")
