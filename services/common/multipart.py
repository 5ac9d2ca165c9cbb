"""Streaming multipart/form-data reader built on python-multipart's push parser.

The request body is fed chunk by chunk; bytes of the `file` part are handed back
to the caller to be written to the blob store as they arrive, so an upload is
never held whole in memory. Small text fields (e.g. `title`) are collected.

`feed` returns only file bytes (one file per request). With `multiple_files=True`,
`feed_events` returns, in body order, `FileStart` / bytes / `FileEnd` for every
`file` part and `Field` for every other part, so a caller can store each file as
soon as it ends (bulk uploads) while holding no more than one file's state.
"""
from __future__ import annotations

from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header


class MultipartError(ValueError):
    """The body is not well-formed multipart/form-data; `field` names the culprit."""

    def __init__(self, message: str, field: str = "body") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class FileStart:
    """A `file` part begins (its bytes follow as `bytes` events)."""

    filename: str | None
    content_type: str | None


@dataclass(frozen=True)
class FileEnd:
    """The current `file` part ended."""


@dataclass(frozen=True)
class Field:
    """A complete non-file part (small, at most max_field_bytes)."""

    name: str
    value: str


Event = FileStart | FileEnd | Field | bytes


def boundary_from(content_type: str | None) -> bytes:
    if not content_type:
        raise MultipartError("Content-Type must be multipart/form-data", field="Content-Type")
    mime, params = parse_options_header(content_type)
    if mime != b"multipart/form-data":
        raise MultipartError("Content-Type must be multipart/form-data", field="Content-Type")
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise MultipartError("the multipart boundary is missing or invalid", field="Content-Type")
    return boundary


class MultipartUpload:
    def __init__(self, content_type: str | None, *, file_field: str = "file", max_field_bytes: int = 64 * 1024,
                 multiple_files: bool = False) -> None:
        self.file_field = file_field
        self.multiple_files = multiple_files
        self.files_seen = 0
        self.max_field_bytes = max_field_bytes
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_content_type: str | None = None
        self.file_seen = False
        self._events: list[Event] = []
        self._headers: dict[bytes, bytes] = {}
        self._header_field = b""
        self._header_value = b""
        self._part_name: str | None = None
        self._in_file = False
        self._field_buf = bytearray()
        self._ended = False
        self._parser = MultipartParser(boundary_from(content_type), callbacks={
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        })

    # -- feeding -------------------------------------------------------------
    def feed(self, chunk: bytes) -> list[bytes]:
        """Parses `chunk`; returns the file bytes it contained (possibly none)."""
        return [e for e in self.feed_events(chunk) if isinstance(e, bytes)]

    def feed_events(self, chunk: bytes) -> list[Event]:
        """Parses `chunk`; returns what it contained, in order (file bytes as `bytes`)."""
        try:
            self._parser.write(chunk)
        except MultipartError:
            raise
        except (FormParserError, ValueError) as exc:  # the parser's own errors (FormParserError is a ValueError)
            raise MultipartError(f"the multipart body is malformed: {exc}") from None
        out, self._events = self._events, []
        return out

    def finish(self) -> None:
        try:
            self._parser.finalize()
        except (FormParserError, ValueError) as exc:
            raise MultipartError(f"the multipart body is malformed: {exc}") from None
        if not self._ended:
            raise MultipartError("the multipart body ended before its closing boundary (upload interrupted?)")

    # -- parser callbacks ----------------------------------------------------
    def _on_part_begin(self) -> None:
        self._headers = {}
        self._part_name = None
        self._in_file = False
        self._field_buf = bytearray()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._header_field.strip().lower()] = self._header_value.strip()
        self._header_field = b""
        self._header_value = b""

    def _on_headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in params:
            raise MultipartError("a multipart part lacks Content-Disposition: form-data with a name")
        self._part_name = _decode(params[b"name"], "field name")
        if self._part_name == self.file_field:
            if self.file_seen and not self.multiple_files:
                raise MultipartError("only one file may be uploaded per request", field=self.file_field)
            self.file_seen = True
            self.files_seen += 1
            self._in_file = True
            raw_name = params.get(b"filename")
            self.filename = _decode(raw_name, "file name", field=self.file_field) if raw_name is not None else None
            ctype = self._headers.get(b"content-type")
            self.file_content_type = ctype.decode("latin-1") if ctype else None
            self._events.append(FileStart(self.filename, self.file_content_type))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._events.append(bytes(data[start:end]))
            return
        self._field_buf += data[start:end]
        if len(self._field_buf) > self.max_field_bytes:
            raise MultipartError(f"the field is longer than {self.max_field_bytes} bytes",
                                 field=self._part_name or "body")

    def _on_part_end(self) -> None:
        if self._in_file:
            self._events.append(FileEnd())
        elif self._part_name is not None:
            value = _decode(bytes(self._field_buf), "field", field=self._part_name)
            self.fields[self._part_name] = value
            self._events.append(Field(self._part_name, value))
        self._in_file = False

    def _on_end(self) -> None:
        self._ended = True


def _decode(raw: bytes, what: str, field: str = "body") -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MultipartError(f"the {what} is not valid UTF-8", field=field) from None
