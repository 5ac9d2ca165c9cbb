"""The one error an extractor raises: a reason a person can read."""
from __future__ import annotations


class ExtractionError(Exception):
    """The file cannot be turned into text; `reason` is shown to the user as-is."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
