"""Pure logic of the upload service: file types, multipart streaming, headers, cursors."""
from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime

import pytest

from services.common.errors import ProblemError
from services.common.multipart import MultipartError, MultipartUpload
from services.upload.file_types import (
    UnsupportedFile,
    check_signature,
    clean_filename,
    file_type_for,
)
from services.upload.http_api import content_disposition, decode_cursor, encode_cursor

BOUNDARY = "b0undary"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def part(name: str, data: bytes, filename: str | None = None) -> bytes:
    disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"


def feed_all(raw: bytes, chunk: int = 7) -> tuple[MultipartUpload, bytes]:
    form = MultipartUpload(f"multipart/form-data; boundary={BOUNDARY}")
    out = b""
    for i in range(0, len(raw), chunk):
        out += b"".join(form.feed(raw[i:i + chunk]))
    form.finish()
    return form, out


def test_multipart_streams_file_bytes_and_keeps_fields() -> None:
    data = "예산을 늘린다\r\n--not a boundary".encode() * 50
    form, out = feed_all(body(part("title", "보도자료".encode()), part("file", data, "보도.txt")))
    assert out == data and form.fields == {"title": "보도자료"} and form.filename == "보도.txt"


@pytest.mark.parametrize("raw, field", [
    (part("file", b"abc", "a.txt"), "body"),  # no closing boundary
    (body(part("file", b"a", "a.txt"), part("file", b"b", "b.txt")), "file"),  # two files
    (body(part("title", b"\xff\xfe")), "title"),  # not UTF-8
    (body(f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nx\r\n".encode()), "body"),  # no disposition
])
def test_multipart_errors_name_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(MultipartError) as err:
        feed_all(raw)
    assert err.value.field == field


@pytest.mark.parametrize("ctype", [None, "application/json", "multipart/form-data"])
def test_multipart_needs_form_data_with_boundary(ctype: str | None) -> None:
    with pytest.raises(MultipartError) as err:
        MultipartUpload(ctype)
    assert err.value.field == "Content-Type"


def test_file_types_by_extension_and_signature() -> None:
    assert file_type_for("보고서.PDF").content_type == "application/pdf"
    assert file_type_for("a.txt").content_type == "text/plain"
    for bad in ("a.hwp3", "a.exe", "noext"):
        with pytest.raises(UnsupportedFile):
            file_type_for(bad)
    check_signature(file_type_for("a.pdf"), b"%PDF-1.7")
    check_signature(file_type_for("a.txt"), "한글".encode("cp949"))
    check_signature(file_type_for("a.txt"), "\ufeff한글".encode("utf-16"))
    with pytest.raises(UnsupportedFile):
        check_signature(file_type_for("a.docx"), b"%PDF-1.7")
    with pytest.raises(UnsupportedFile):
        check_signature(file_type_for("a.txt"), b"MZ\x00\x00")


def test_hwp_and_hwpx_are_accepted_when_their_bytes_agree() -> None:
    hwp, hwpx = file_type_for("보고서.HWP"), file_type_for("보고서.hwpx")
    assert (hwp.content_type, hwpx.content_type) == ("application/x-hwp", "application/hwp+zip")
    check_signature(hwp, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 504)
    check_signature(hwpx, b"PK\x03\x04" + b"\0" * 26 + b"mimetypeapplication/hwp+zip")
    with pytest.raises(UnsupportedFile) as err:
        check_signature(hwp, b"non-ole file\n")  # pyhwp's nonole.hwp
    assert str(err.value) == "the file is named as HWP but its content is not a HWP file"
    with pytest.raises(UnsupportedFile) as err:
        check_signature(hwp, b"HWP Document File V3.00 \x1a\x01\x02\x03\x04\x05")
    assert str(err.value).startswith("HWP 3.0 files (한글 97 and older) are not supported")
    with pytest.raises(UnsupportedFile):
        check_signature(hwpx, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")


@pytest.mark.parametrize("name, content_type", [
    ("보고서.csv", "text/csv"), ("회의록.MD", "text/markdown"), ("보도.html", "text/html"),
    ("보도.htm", "text/html"), ("목록.xml", "application/xml"),
])
def test_text_formats_are_accepted_when_their_content_is_text(name: str, content_type: str) -> None:
    file_type = file_type_for(name)
    assert file_type.content_type == content_type
    check_signature(file_type, "<p>한글</p>".encode("cp949"))
    check_signature(file_type, "\ufeff<p>한글</p>".encode("utf-16"))
    with pytest.raises(UnsupportedFile) as err:
        check_signature(file_type, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert str(err.value) == f"the file is named as {file_type.name} but contains binary data"


@pytest.mark.parametrize("head, kind", [
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3", "PDF"),
    (b"PK\x03\x04\x14\x00", "ZIP (DOCX, HWPX or other)"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "OLE (HWP, DOC or other)"),
])
def test_documents_renamed_to_a_text_format_are_refused(head: bytes, kind: str) -> None:
    for name, shown in (("a.txt", "TXT"), ("a.html", "HTML"), ("a.md", "Markdown")):
        with pytest.raises(UnsupportedFile) as err:
            check_signature(file_type_for(name), head)
        assert str(err.value) == f"the file is named as {shown} but its content is a {kind} file"


def test_unsupported_type_lists_each_supported_one_once() -> None:
    with pytest.raises(UnsupportedFile) as err:
        file_type_for("a.exe")
    assert str(err.value) == ("file type .exe is not supported; supported types: "
                              "CSV, DOCX, HTML, HWP, HWPX, Markdown, PDF, TXT, XML")


def test_clean_filename() -> None:
    assert clean_filename("C:\\Users\\kim\\예산.pdf") == "예산.pdf"
    assert clean_filename("../../etc/passwd") == "passwd"
    assert clean_filename("a\x00b\nc.txt") == "abc.txt"
    assert clean_filename("\u1100\u1161.txt") == "가.txt"  # NFD -> NFC
    long = clean_filename("가" * 300 + ".pdf")
    assert len(long) == 255 and long.endswith(".pdf")


def test_content_disposition_keeps_korean_names_safely() -> None:
    header = content_disposition('예산 "안".pdf')
    assert header.isascii()
    assert 'filename="__ ___.pdf"' in header
    assert "filename*=UTF-8''%EC%98%88%EC%82%B0%20%22%EC%95%88%22.pdf" in header


def test_cursor_round_trip_and_tampering() -> None:
    key = (datetime(2026, 11, 22, 3, 4, 5, 678, tzinfo=UTC), str(uuid.uuid4()))
    tenant, other = str(uuid.uuid4()), str(uuid.uuid4())
    filters = {"status": None, "tag": "예산", "pii": None}
    cursor = encode_cursor(key, tenant, filters)
    assert decode_cursor(cursor, tenant, filters) == key
    mac = cursor.split(".")[1]
    forged_body = base64.urlsafe_b64encode(json.dumps({"c": key[0].isoformat(), "i": str(uuid.uuid4())}).encode())
    nested = base64.urlsafe_b64encode(b"[" * 8000 + b"]" * 8000).decode().rstrip("=")
    for bad in ("", "!!", "eyJ4IjoxfQ", cursor[:-3], f"{forged_body.decode().rstrip('=')}.{mac}", f"{nested}.{mac}",
                "a" * 10_000):
        with pytest.raises(ProblemError) as err:
            decode_cursor(bad, tenant, filters)
        assert err.value.status == 422 and err.value.field == "cursor"
    # Bound to the tenant and to the listing's filters.
    for wrong_tenant, wrong_filters in ((other, filters), (tenant, {**filters, "tag": "복지"})):
        with pytest.raises(ProblemError) as err:
            decode_cursor(cursor, wrong_tenant, wrong_filters)
        assert "belongs to a different query or tenant" in err.value.detail
