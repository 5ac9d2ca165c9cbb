"""Extraction of files the tests generate themselves (formats, encodings, damage, limits)."""
from __future__ import annotations

import codecs
import io
import os
import unicodedata
import zipfile

import docx
import pytest
from pypdf import PdfReader, PdfWriter
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen import canvas

from services.tagging_worker.extractors import ExtractionError, Limits, extract_text

KOREAN = "대한민국 행정안전부는 공공기관의 문서를 자동으로 분류합니다."
KOREAN_CP949_ONLY = "똠방각하 펲시콜라 뷁"  # syllables outside EUC-KR (KS X 1001), present in CP949


def _fail(data: bytes, filename: str = "", content_type: str = "", limits: Limits | None = None) -> str:
    with pytest.raises(ExtractionError) as err:
        extract_text(data, filename, content_type, limits)
    return err.value.reason


# -- DOCX --------------------------------------------------------------------------------------


def _korean_docx() -> bytes:
    document = docx.Document()
    document.add_heading("업무 보고서", level=1)
    document.add_paragraph("첫째 문단: " + KOREAN)
    table = document.add_table(rows=3, cols=2)
    table.cell(0, 0).text = "부서"
    table.cell(0, 1).text = "담당자"
    table.cell(1, 0).text = "정보화담당관실"
    table.cell(1, 1).text = "홍길동"
    merged = table.cell(2, 0).merge(table.cell(2, 1))
    merged.text = "병합된 셀의 내용"
    run_paragraph = document.add_paragraph("셋째 문단은 ")
    run_paragraph.add_run("굵은 글씨").bold = True
    run_paragraph.add_run("를 포함합니다.")
    section = document.sections[0]
    section.header.paragraphs[0].text = "머리글 텍스트"
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


def _rewrite_zip(data: bytes, replace: dict[str, bytes | None]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if item.filename in replace:
                if replace[item.filename] is not None:
                    dst.writestr(item.filename, replace[item.filename])
            else:
                dst.writestr(item, src.read(item.filename))
    return out.getvalue()


def test_docx_paragraphs_and_table_in_order() -> None:
    text = extract_text(_korean_docx(), "보고서.docx")
    lines = text.split("\n")
    assert lines[0] == "업무 보고서"
    assert lines[1] == "첫째 문단: " + KOREAN
    assert lines[2] == "부서\t담당자"
    assert lines[3] == "정보화담당관실\t홍길동"
    assert lines[4] == "병합된 셀의 내용"  # merged cell once, not repeated per grid column
    assert lines[5] == "셋째 문단은 굵은 글씨를 포함합니다."
    assert "머리글" not in text  # headers/footers are left out (repeated boilerplate)


def test_docx_detected_from_bytes_without_a_declared_type() -> None:
    text = extract_text(_korean_docx(), "", "application/octet-stream")
    assert "정보화담당관실" in text


def test_docx_with_malformed_xml_is_damaged() -> None:
    broken = _rewrite_zip(_korean_docx(), {"word/document.xml": "<w:document><w:body><w:p>깨진".encode()})
    reason = _fail(broken, "a.docx")
    assert reason.startswith("the DOCX file is damaged: ")


def test_truncated_docx_is_damaged() -> None:
    data = _korean_docx()
    reason = _fail(data[: len(data) // 2], "a.docx")
    assert reason.startswith("the DOCX file is damaged: ")


def test_zip_that_is_not_a_docx() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("readme.txt", "그냥 압축 파일")
    assert _fail(buf.getvalue(), "a.docx").startswith("not a valid DOCX file")
    assert _fail(buf.getvalue(), "a.zip") == "unsupported file type: .zip"
    assert _fail(buf.getvalue(), "", "application/octet-stream") == "unsupported file type: ZIP archive"


def test_docx_declared_but_not_a_zip() -> None:
    assert _fail("그냥 텍스트".encode(), "a.docx") == "not a valid DOCX file"


def test_password_protected_office_file_is_reported_encrypted() -> None:
    # Encrypted OOXML files are OLE compound files holding an EncryptionInfo stream.
    fake_ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 504 + "EncryptionInfo".encode("utf-16-le")
    assert "encrypted" in _fail(fake_ole, "a.docx")


# -- TXT ---------------------------------------------------------------------------------------


def test_cp949_text_with_extended_syllables() -> None:
    data = (KOREAN_CP949_ONLY + "\r\n" + KOREAN + "\r\n").encode("cp949")
    with pytest.raises(UnicodeDecodeError):
        data.decode("euc-kr")  # really outside EUC-KR
    assert extract_text(data, "a.txt") == KOREAN_CP949_ONLY + "\n" + KOREAN


def test_euc_kr_text() -> None:
    data = (KOREAN + "\n둘째 줄입니다.").encode("euc-kr")
    assert extract_text(data, "a.txt", "text/plain; charset=euc-kr") == KOREAN + "\n둘째 줄입니다."


def test_utf8_with_bom() -> None:
    data = codecs.BOM_UTF8 + KOREAN.encode("utf-8")
    assert extract_text(data, "a.txt") == KOREAN


def test_utf16_with_bom() -> None:
    data = KOREAN.encode("utf-16")  # Python writes the BOM
    assert extract_text(data, "a.txt") == KOREAN


def test_text_is_nfc_with_unix_newlines() -> None:
    decomposed = unicodedata.normalize("NFD", "한글 문서")
    assert decomposed != "한글 문서"
    data = (decomposed + "\r\n둘째\r셋째\n").encode("utf-8")
    assert extract_text(data, "a.txt") == "한글 문서\n둘째\n셋째"


def test_binary_garbage_is_not_text() -> None:
    garbage = bytes(range(256)) * 8 + os.urandom(2048)
    assert _fail(garbage, "a.txt").startswith("not a text file")
    assert _fail(garbage, "").startswith("not a text file")


def test_text_declared_but_pdf_content() -> None:
    assert _fail(_korean_pdf(["한글"]), "a.txt").startswith("not a text file")


def test_empty_file() -> None:
    for name in ("a.txt", "a.pdf", "a.docx", ""):
        assert _fail(b"", name) == "the file is empty"


# -- PDF ---------------------------------------------------------------------------------------


def _korean_pdf(pages: list[str]) -> bytes:
    pdfmetrics.registerFont(UnicodeCIDFont("HYSMyeongJo-Medium"))
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf)
    for text in pages:
        pdf.setFont("HYSMyeongJo-Medium", 14)
        if text:
            pdf.drawString(72, 750, text)
        pdf.showPage()
    pdf.save()
    return buf.getvalue()


def _encrypted(data: bytes, user_password: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_reportlab_korean_pdf_reads_back() -> None:
    """pypdf reads Korean back from reportlab's built-in CID font HYSMyeongJo-Medium."""
    text = extract_text(_korean_pdf([KOREAN, "둘째 쪽"]), "a.pdf")
    assert text.split("\n\n") == [KOREAN, "둘째 쪽"]


def test_pdf_detected_without_declared_type() -> None:
    assert extract_text(_korean_pdf([KOREAN]), "", "") == KOREAN


def test_pdf_with_only_an_owner_password_opens() -> None:
    data = _encrypted(_korean_pdf([KOREAN]), user_password="")
    assert PdfReader(io.BytesIO(data)).is_encrypted
    assert extract_text(data, "a.pdf") == KOREAN


def test_pdf_with_a_user_password_is_encrypted() -> None:
    reason = _fail(_encrypted(_korean_pdf([KOREAN]), user_password="12345"), "a.pdf")
    assert "encrypted" in reason


def test_truncated_pdf_is_damaged() -> None:
    data = _korean_pdf([KOREAN])
    assert _fail(data[: len(data) // 3], "a.pdf").startswith("the PDF file is damaged: ")


def test_declared_pdf_that_is_not_a_pdf() -> None:
    assert _fail("이것은 PDF가 아닙니다".encode(), "a.pdf") == "not a valid PDF file"
    assert _fail("이것은 PDF가 아닙니다".encode(), "", "application/pdf") == "not a valid PDF file"


def test_pdf_without_text_gives_empty_text() -> None:
    """A page with no text layer (like a scan): no error here; the worker fails it as 'no text'."""
    assert extract_text(_korean_pdf([""]), "scan.pdf") == ""


def test_pdf_page_and_character_limits() -> None:
    data = _korean_pdf(["첫째 쪽", "둘째 쪽", "셋째 쪽"])
    assert extract_text(data, "a.pdf", limits=Limits(max_pages=2)) == "첫째 쪽\n\n둘째 쪽"
    assert extract_text(data, "a.pdf", limits=Limits(max_chars=3)) == "첫째 "[:3]


# -- other formats -----------------------------------------------------------------------------


@pytest.mark.parametrize("filename, content_type, label", [
    ("문서.hwp", "application/x-hwp", ".hwp"),
    ("문서.HWPX", "", ".hwpx"),
    ("그림.png", "image/png", ".png"),
    ("", "application/x-hwp", "application/x-hwp"),
])
def test_unsupported_types(filename: str, content_type: str, label: str) -> None:
    assert _fail(b"\x89PNG\r\n\x1a\n....", filename, content_type) == f"unsupported file type: {label}"


def test_ole_file_without_declared_type_is_unsupported() -> None:
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 1000
    assert _fail(ole, "").startswith("unsupported file type: OLE compound file")
