"""Streaming multipart/form-data reader built on python-multipart's push parser.

The request body is fed chunk by chunk; bytes of the `file` part are handed back
to the caller to be written to the blob store as they arrive, so an upload is
never held whole in memory. Small text fields (e.g. `title`) are collected.
"""
from __future__ import annotations

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header


class MultipartError(ValueError):
    """The body is not well-formed multipart/form-data; `field` names the culprit."""

    def __init__(self, message: str, field: str = "body") -> None:
        super().__init__(message)
        self.field = field


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
    def __init__(self, content_type: str | None, *, file_field: str = "file", max_field_bytes: int = 64 * 1024) -> None:
        self.file_field = file_field
        self.max_field_bytes = max_field_bytes
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_content_type: str | None = None
        self.file_seen = False
        self._pending: list[bytes] = []
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
        try:
            self._parser.write(chunk)
        except MultipartError:
            raise
        except (FormParserError, ValueError) as exc:  # the parser's own errors (FormParserError is a ValueError)
            raise MultipartError(f"the multipart body is malformed: {exc}") from None
        out, self._pending = self._pending, []
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
            if self.file_seen:
                raise MultipartError("only one file may be uploaded per request", field=self.file_field)
            self.file_seen = True
            self._in_file = True
            raw_name = params.get(b"filename")
            self.filename = _decode(raw_name, "file name", field=self.file_field) if raw_name is not None else None
            ctype = self._headers.get(b"content-type")
            self.file_content_type = ctype.decode("latin-1") if ctype else None

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._pending.append(bytes(data[start:end]))
            return
        self._field_buf += data[start:end]
        if len(self._field_buf) > self.max_field_bytes:
            raise MultipartError(f"the field is longer than {self.max_field_bytes} bytes",
                                 field=self._part_name or "body")

    def _on_part_end(self) -> None:
        if not self._in_file and self._part_name is not None:
            self.fields[self._part_name] = _decode(bytes(self._field_buf), "field", field=self._part_name)
        self._in_file = False

    def _on_end(self) -> None:
        self._ended = True


def _decode(raw: bytes, what: str, field: str = "body") -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MultipartError(f"the {what} is not valid UTF-8", field=field) from None
