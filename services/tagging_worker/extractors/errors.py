"""The one error an extractor raises: a reason a person can read."""
from __future__ import annotations


class ExtractionError(Exception):
    """The file cannot be turned into text; `reason` is shown to the user as-is.

    `format` and `extractor` say what was known when it failed (see `Extracted`): set by
    `extract_document` once the format is decided, None before (or when the child process
    running the extraction timed out or crashed)."""

    def __init__(self, reason: str, *, format: str | None = None, extractor: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.format = format
        self.extractor = extractor
