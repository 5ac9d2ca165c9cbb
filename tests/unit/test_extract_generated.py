"""Extraction of files the tests generate themselves (formats, encodings, damage, limits)."""
from __future__ import annotations

import codecs
import io
import os
import shutil
import struct
import time
import unicodedata
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import docx
import olefile
import pytest
from pypdf import PdfReader, PdfWriter
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen import canvas

from services.tagging_worker.extractors import ExtractionError, Limits, extract_text
from services.tagging_worker.extractors.hwp import MsvcRandom, paragraph_text
from services.tagging_worker.extractors.hwpx import read_hwpx
from services.tagging_worker.extractors.pdf import NO_TEXT_LAYER
from services.tagging_worker.extractors.text import compose_makeup_sequences
from tests.conftest import SAMPLES
from tests.support import pdf_without_text

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


@pytest.mark.parametrize("bom, codec", [(codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"),
                                        (codecs.BOM_UTF8, "utf-8")])
def test_unicode_with_each_byte_order_mark(bom: bytes, codec: str) -> None:
    data = bom + (KOREAN + "\r\n둘째 줄\r\n").encode(codec)
    assert extract_text(data, "a.txt") == KOREAN + "\n둘째 줄"


# KS X 1001 make-up sequences, written byte by byte: 0xA4D4 is the Hangul filler, row 0xA4 the jamo.
FILLER = b"\xa4\xd4"
SSANGSIOS, YU = b"\xa4\xb6", b"\xa4\xd0"                 # ㅆ ㅠ
SSANGTIKEUT, O_, MIEUM = b"\xa4\xa8", b"\xa4\xc7", b"\xa4\xb1"  # ㄸ ㅗ ㅁ
PIEUP, WE, RIEUL_KIYEOK = b"\xa4\xb2", b"\xa4\xce", b"\xa4\xaa"  # ㅂ ㅞ ㄺ


def test_euc_kr_make_up_sequences_are_composed() -> None:
    """쓔, 똠 and 뷁 are not among EUC-KR's 2,350 syllables: an EUC-KR file writes them as
    filler + initial + medial + final (filler for no final)."""
    ssyu = FILLER + SSANGSIOS + YU + FILLER
    ttom = FILLER + SSANGTIKEUT + O_ + MIEUM
    bwelg = FILLER + PIEUP + WE + RIEUL_KIYEOK
    jamo = SSANGSIOS + YU + SSANGTIKEUT + O_ + MIEUM + PIEUP + WE + RIEUL_KIYEOK
    assert jamo.decode("euc-kr") == "ㅆㅠㄸㅗㅁㅂㅞㄺ"  # the hand-written bytes are the intended jamo
    assert ssyu.decode("cp949") == "ㅤㅆㅠㅤ"  # what the codec alone gives
    data = "민원: ".encode("euc-kr") + ssyu + b" " + ttom + "방각하 ".encode("euc-kr") + bwelg + b"\r\n"
    assert extract_text(data, "a.txt") == "민원: 쓔 똠방각하 뷁"
    assert extract_text(data, "a.txt", "text/plain; charset=euc-kr") == "민원: 쓔 똠방각하 뷁"
    # A lone initial or medial is that letter; a sequence that makes no syllable is left alone.
    kiyeok, a, kiyeok_sios = b"\xa4\xa1", b"\xa4\xbf", b"\xa4\xa3"  # ㄱ ㅏ ㄳ
    assert (kiyeok + a + kiyeok_sios).decode("euc-kr") == "ㄱㅏㄳ"
    lone = FILLER + kiyeok + FILLER + FILLER + b" " + FILLER + FILLER + a + FILLER
    odd = FILLER + kiyeok_sios + a + FILLER  # ㄳ cannot begin a syllable
    assert extract_text("자모 ".encode("euc-kr") + lone + b" " + odd, "a.txt") == "자모 ㄱ ㅏ ㅤㄳㅏㅤ"


def test_make_up_composition_gives_every_modern_syllable() -> None:
    """Checked against the Unicode character names: each syllable's conjoining jamo (NFD) are
    named like the compatibility jamo that a make-up sequence holds."""
    def compatibility(jamo: str) -> str:
        name = unicodedata.name(jamo)
        for kind in ("CHOSEONG", "JUNGSEONG", "JONGSEONG"):
            name = name.replace(f"HANGUL {kind} ", "HANGUL LETTER ")
        return unicodedata.lookup(name)

    syllables = [chr(code) for code in range(0xAC00, 0xD7A4)]
    sequences = []
    for syllable in syllables:
        jamo = [compatibility(j) for j in unicodedata.normalize("NFD", syllable)]
        sequences.append("\u3164" + "".join(jamo) + ("\u3164" if len(jamo) == 2 else ""))
    assert compose_makeup_sequences("".join(sequences)) == "".join(syllables)


# -- HTML, XML, CSV, Markdown ------------------------------------------------------------------

KOREAN_PAGE = """<!DOCTYPE html>
<html><head><meta charset="euc-kr"><title>보도자료 - 행정안전부</title>
<style>p { color: red } /* 스타일은 보이지 않음 */</style>
<script>document.write("<p>스크립트 문장</p>"); var x = 1 < 2;</script></head>
<body><h1>2027년   예산안
 발표</h1><!-- 주석: 보이지 않음 -->
<p>정부는 &ldquo;디지털 정부&rdquo; &amp; 지역&middot;균형 &#54620;&#44544; 예산을<br>늘립니다.</p>
<table><tr><th>부서</th><th>예산</th></tr><tr><td>정보화담당관실</td><td>12억</td></tr></table>
<ul><li>첫째</li><li>둘째</li></ul><template><p>템플릿</p></template>
</body></html>"""
KOREAN_PAGE_TEXT = ("보도자료 - 행정안전부\n\n2027년 예산안 발표\n\n"
                    "정부는 “디지털 정부” & 지역·균형 한글 예산을\n늘립니다.\n\n"
                    "부서\t예산\n정보화담당관실\t12억\n\n첫째\n둘째")


@pytest.mark.parametrize("encoding", ["utf-8", "euc-kr", "utf-16"])
def test_html_visible_text_without_script_style_or_comments(encoding: str) -> None:
    assert extract_text(KOREAN_PAGE.encode(encoding), "보도자료.html") == KOREAN_PAGE_TEXT


def test_html_by_content_type_and_htm_extension() -> None:
    data = KOREAN_PAGE.encode("utf-8")
    assert extract_text(data, "", "text/html; charset=utf-8") == KOREAN_PAGE_TEXT
    assert extract_text(data, "a.htm") == KOREAN_PAGE_TEXT


def test_xhtml_with_xml_declaration_reads_as_html() -> None:
    page = ('<?xml version="1.0" encoding="euc-kr"?>'
            '<html xmlns="http://www.w3.org/1999/xhtml"><body><p>공지 사항</p></body></html>')
    assert extract_text(page.encode("euc-kr"), "a.html") == "공지 사항"


def test_html_nested_too_deeply_fails_clearly() -> None:
    deep = ("<div>" * 10_000 + "깊은 글" + "</div>" * 10_000).encode()
    assert _fail(deep, "a.html").startswith("the HTML file is too deeply nested or too large to read")


def test_xml_text_keeps_words_whole_and_expands_no_entities() -> None:
    document = """<?xml version="1.0" encoding="euc-kr"?>
<!DOCTYPE 문서 [<!ENTITY a "하하하하하하하하하하"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
<!ENTITY 비밀 SYSTEM "file:///etc/passwd">]>
<문서><제목>예산 &amp; 결산</제목><!-- 주석 --><?처리 지시?>
  <본문>행정<강조>안전</강조>부 &d; &비밀; 끝 &#54620;&#44544;</본문>
  <목록><항목>첫째</항목><항목>둘째</항목></목록></문서>"""
    text = extract_text(document.encode("euc-kr"), "a.xml")
    assert text == "예산 & 결산\n행정안전부 끝 한글\n첫째\n둘째"


def test_broken_and_deep_xml_fail_clearly() -> None:
    assert _fail("<문서><제목>끝나지 않음</문서>".encode(), "a.xml").startswith("not a well-formed XML file: ")
    deep = ("<a>" * 1000 + "글" + "</a>" * 1000).encode()
    assert _fail(deep, "", "application/xml").startswith("the XML file is too deeply nested or too large to read")


def test_csv_and_markdown_are_read_as_text() -> None:
    csv = "부서,예산\r\n정보화담당관실,12억\r\n".encode("cp949")
    assert extract_text(csv, "예산.csv") == "부서,예산\n정보화담당관실,12억"
    assert extract_text(csv, "", "text/csv") == "부서,예산\n정보화담당관실,12억"
    markdown = "# 회의록\n\n- **안건**: 예산 <b>검토</b>\n".encode()
    assert extract_text(markdown, "회의록.md") == "# 회의록\n\n- **안건**: 예산 <b>검토</b>"


@pytest.mark.parametrize("filename", ["a.txt", "a.html", "a.xml", "a.csv", "a.md"])
def test_text_formats_that_are_really_documents_or_binary(filename: str) -> None:
    assert _fail(_korean_pdf(["한글"]), filename) == "not a text file: the content is a PDF document"
    assert _fail(_korean_docx(), filename) == "not a text file: the content is a DOCX document"
    assert _fail(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), filename) == (
        "not a text file: it contains NUL bytes (binary data)")


# -- hostile text ------------------------------------------------------------------------------


def test_nul_bytes_anywhere_mean_binary() -> None:
    assert _fail("한글\x00문서".encode(), "a.txt") == "not a text file: it contains NUL bytes (binary data)"
    late = "한글 문서 ".encode() * 20_000 + b"\x00"  # after the first 64 KiB
    assert _fail(late, "a.txt") == "not a text file: it contains NUL bytes (binary data)"


def test_huge_single_line_is_cut_at_the_character_limit() -> None:
    line = ("가나다라 " * 2_000_000).encode()  # 26 MB, no newline
    assert extract_text(line, "a.txt", limits=Limits(max_chars=1000)) == ("가나다라 " * 200)[:1000]


def test_long_run_of_blanks_is_handled_in_linear_time() -> None:
    """A regular expression for trailing blanks once took quadratic time here (minutes for 1 MB)."""
    start = time.monotonic()
    assert extract_text(b" " * 1_000_000 + "끝".encode() + b"\t" * 1_000_000, "a.txt") == "끝"
    assert time.monotonic() - start < 10


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
    """PDFium reads Korean back from reportlab's built-in CID font HYSMyeongJo-Medium (not embedded:
    the text comes from the font's standard CMap UniKS-UCS2-H, no Korean font is needed)."""
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


def test_pdf_without_a_text_layer_fails_as_such() -> None:
    """A scan has no text layer and this platform no OCR: the reason says so."""
    for data in (pdf_without_text(), _korean_pdf(["", ""])):
        assert _fail(data, "scan.pdf") == NO_TEXT_LAYER
    assert "no text layer (OCR not available)" in NO_TEXT_LAYER


def test_pdf_with_text_on_a_later_page_only_is_read() -> None:
    assert extract_text(_korean_pdf(["", "둘째 쪽"]), "a.pdf") == "둘째 쪽"


def test_pdf_without_pages_and_garbage_pdfs_fail_clearly() -> None:
    no_pages = io.BytesIO()
    PdfWriter().write(no_pages)
    assert _fail(no_pages.getvalue(), "a.pdf") == "the PDF file has no pages"
    for data in (b"%PDF-1.7\n", b"%PDF-1.4\n" + bytes(range(256)) * 10):
        assert _fail(data, "a.pdf").startswith("the PDF file is damaged: ")


def test_pdf_page_and_character_limits() -> None:
    data = _korean_pdf(["첫째 쪽", "둘째 쪽", "셋째 쪽"])
    assert extract_text(data, "a.pdf", limits=Limits(max_pages=2)) == "첫째 쪽\n\n둘째 쪽"
    assert extract_text(data, "a.pdf", limits=Limits(max_chars=3)) == "첫째 "[:3]


# -- HWPX --------------------------------------------------------------------------------------

_HP = "http://www.hancom.co.kr/hwpml/2011/paragraph"
_HS = "http://www.hancom.co.kr/hwpml/2011/section"
_OPF = "http://www.idpf.org/2007/opf/"


def _p(*runs: str) -> str:
    """An OWPML paragraph; each argument is the content of one run (hp:t elements, tables ...)."""
    return '<hp:p paraPrIDRef="0" styleIDRef="0">' + "".join(
        f'<hp:run charPrIDRef="0">{run}</hp:run>' for run in runs) + "</hp:p>"


def _t(text: str) -> str:
    return f"<hp:t>{text}</hp:t>"


def _table(rows: list[list[str]]) -> str:
    cells = "".join("<hp:tr>" + "".join(f"<hp:tc><hp:subList>{_p(_t(cell))}</hp:subList></hp:tc>" for cell in row)
                    + "</hp:tr>" for row in rows)
    return f'<hp:tbl rowCnt="{len(rows)}" colCnt="{len(rows[0])}">{cells}</hp:tbl>'


def _section(*paragraphs: str) -> str:
    return (f'<?xml version="1.0" encoding="UTF-8" standalone="yes" ?>'
            f'<hs:sec xmlns:hp="{_HP}" xmlns:hs="{_HS}">' + "".join(paragraphs) + "</hs:sec>")


def _hwpx(sections: list[str], *, package: bool = True, spine: list[int] | None = None,
          extra: dict[str, bytes] | None = None) -> bytes:
    """An HWPX package laid out as 한글 writes one: mimetype first and stored, then the parts."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo("mimetype"), "application/hwp+zip", zipfile.ZIP_STORED)
        archive.writestr("version.xml", '<?xml version="1.0"?><hv:HCFVersion xmlns:hv="http://www.hancom.co.kr/'
                                        'hwpml/2011/version" major="5" minor="1"/>')
        archive.writestr("Contents/header.xml", f'<?xml version="1.0"?><hh:head xmlns:hh="http://www.hancom.co.kr/'
                                                f'hwpml/2011/head" secCnt="{len(sections)}"/>')
        for index, section in enumerate(sections):
            archive.writestr(f"Contents/section{index}.xml", section)
        if package:
            order = spine if spine is not None else list(range(len(sections)))
            items = "".join(f'<opf:item id="section{i}" href="Contents/section{i}.xml" media-type="application/xml"/>'
                            for i in range(len(sections)))
            refs = "".join(f'<opf:itemref idref="section{i}"/>' for i in order)
            archive.writestr("Contents/content.hpf",
                             f'<?xml version="1.0"?><opf:package xmlns:opf="{_OPF}"><opf:metadata>'
                             f'<opf:title>업무 보고</opf:title></opf:metadata><opf:manifest>'
                             f'<opf:item id="header" href="Contents/header.xml" media-type="application/xml"/>{items}'
                             f'</opf:manifest><opf:spine><opf:itemref idref="header"/>{refs}</opf:spine>'
                             f'</opf:package>')
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buf.getvalue()


def _korean_hwpx() -> bytes:
    body = _section(
        _p(_t("업무 보고서")),
        _p(_t("첫째 문단: "), _t(KOREAN)),
        _p(_t("표 앞의 글"), _table([["부서", "담당자"], ["정보화담당관실", "홍길동"]]), _t("표 뒤의 글")),
        _p('<hp:rect><hp:drawText><hp:subList>' + _p(_t("글상자 안의 글")) + "</hp:subList></hp:drawText>"
           "<hp:shapeComment>사각형입니다.</hp:shapeComment></hp:rect>"),
        _p("<hp:t>탭<hp:tab/>뒤<hp:lineBreak/>줄바꿈 뒤</hp:t>"),
    )
    return _hwpx([body, _section(_p(_t("둘째 구역입니다.")))])


def test_hwpx_paragraphs_tables_and_shapes_in_document_order() -> None:
    assert extract_text(_korean_hwpx(), "보고서.hwpx").split("\n") == [
        "업무 보고서",
        "첫째 문단: " + KOREAN,
        "표 앞의 글",
        "부서", "담당자", "정보화담당관실", "홍길동",  # one line per cell paragraph
        "표 뒤의 글",
        "글상자 안의 글",  # the shape's text; its comment (not hp:t) is left out
        "탭\t뒤", "줄바꿈 뒤",
        "둘째 구역입니다.",
    ]
    document = read_hwpx(_korean_hwpx(), Limits())
    assert (document.title, document.sections) == ("업무 보고", 2)


def test_hwpx_detected_from_bytes_and_from_its_content_type() -> None:
    assert extract_text(_korean_hwpx(), "", "application/octet-stream").startswith("업무 보고서")
    assert extract_text(_korean_hwpx(), "", "application/hwp+zip").startswith("업무 보고서")


def test_hwpx_sections_follow_the_spine_or_their_numbers() -> None:
    sections = [_section(_p(_t(f"구역 {i}"))) for i in range(11)]
    numbered = [f"구역 {i}" for i in range(11)]  # section10 after section9, not after section1
    assert extract_text(_hwpx(sections, package=False), "a.hwpx").split("\n") == numbered
    spine = [1, 0, *range(2, 11)]
    assert extract_text(_hwpx(sections, spine=spine), "a.hwpx").split("\n") == [f"구역 {i}" for i in spine]


def test_hwpx_character_limit() -> None:
    sections = [_section(_p(_t("가" * 1000))) for _ in range(5)]
    assert extract_text(_hwpx(sections), "a.hwpx", limits=Limits(max_chars=1500)) == "가" * 1000 + "\n" + "가" * 499


def test_hwpx_zip_bomb_fails_clearly() -> None:
    # 60 MB of text packed into ~60 KB: refused by its compression ratio before anything is unpacked.
    bomb = _hwpx([_section(_p(_t(" " * 60_000_000)))])
    assert len(bomb) < 200_000
    reason = _fail(bomb, "a.hwpx")
    assert reason.startswith("the HWPX file looks like a compression bomb: Contents/section0.xml unpacks")
    # Parts that compress less are still bounded by the unpacked size of everything read.
    big = _hwpx([_section(_p(_t(KOREAN * 2000))) for _ in range(3)])
    reason = _fail(big, "a.hwpx", limits=Limits(max_unpacked_bytes=300_000))
    assert reason.startswith("the HWPX file is too large when unpacked (over 300000 bytes)")


def test_docx_zip_bomb_fails_clearly() -> None:
    """python-docx unpacks every part: a tightly packed one is refused from the archive's directory,
    and so is a package whose parts together declare more than the budget."""
    def with_part(name: str, data: bytes) -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(_korean_docx())) as src, \
                zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
            for item in src.infolist():
                dst.writestr(item, src.read(item))
            dst.writestr(name, data)
        return out.getvalue()

    bomb = with_part("word/media/padding.bin", b"\0" * 60_000_000)
    assert len(bomb) < 200_000
    assert _fail(bomb, "a.docx").startswith(
        "the DOCX file looks like a compression bomb: word/media/padding.bin unpacks")
    reason = _fail(with_part("word/media/photo.bin", os.urandom(400_000)), "a.docx",
                   limits=Limits(max_unpacked_bytes=300_000))
    assert reason.startswith("the DOCX file is too large when unpacked (over 300000 bytes)")


def test_hwpx_with_too_many_entries_fails_clearly() -> None:
    crowded = _hwpx([_section(_p(_t("많은 항목")))], extra={f"BinData/{i}.txt": b"" for i in range(10_001)})
    assert _fail(crowded, "a.hwpx").startswith("the HWPX file has too many parts")


def test_hwpx_with_entity_declarations_is_refused() -> None:
    laughs = ('<?xml version="1.0"?><!DOCTYPE hs:sec [<!ENTITY a "하하하하하하하하하하">'
              '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
              f'<hs:sec xmlns:hp="{_HP}" xmlns:hs="{_HS}">{_p(_t("&c;"))}</hs:sec>')
    assert _fail(_hwpx([laughs]), "a.hwpx") == (
        "the HWPX file is not valid: Contents/section0.xml has a document type declaration")
    external = ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                f'<hs:sec xmlns:hp="{_HP}" xmlns:hs="{_HS}">{_p(_t("&e;"))}</hs:sec>')
    reason = _fail(_hwpx([external]), "a.hwpx")
    assert "document type declaration" in reason and "root:" not in reason


def test_damaged_hwpx_files_fail_clearly() -> None:
    data = _korean_hwpx()
    assert _fail(data[: len(data) // 2], "a.hwpx").startswith("the HWPX file is damaged: ")
    broken = _hwpx([_section(_p(_t("깨진"))).replace("</hs:sec>", "")])
    assert _fail(broken, "a.hwpx").startswith("the HWPX file is damaged: invalid XML in Contents/section0.xml")
    assert _fail(_rewrite_zip(data, {"Contents/section0.xml": None, "Contents/section1.xml": None}), "a.hwpx") == (
        "not a valid HWPX file: the archive has no Contents/section0.xml")
    assert _fail("그냥 텍스트".encode(), "a.hwpx") == "not a valid HWPX file: the content is not a ZIP package"


def test_encrypted_hwpx_fails_as_encrypted() -> None:
    """A password-protected HWPX lists its encrypted parts in META-INF/manifest.xml (ODF style)."""
    manifest = ('<?xml version="1.0"?><odf:manifest xmlns:odf="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0">'
                '<odf:file-entry odf:full-path="Contents/section0.xml" odf:media-type="application/xml">'
                '<odf:encryption-data odf:checksum-type="SHA1"/></odf:file-entry></odf:manifest>')
    data = _hwpx([_section(_p(_t("비밀")))], extra={"META-INF/manifest.xml": manifest.encode()})
    assert "encrypted (password-protected)" in _fail(data, "a.hwpx")


# -- HWP 5.0: hostile variations of a real sample (no HWP writer exists to generate one) --------

SAMPLE_HWP = SAMPLES / "hwp" / "pyhwp__sample-5017.hwp"
DISTRIBUTION_HWP = SAMPLES / "hwp" / "hwplib__distribution.hwp"
needs_samples = pytest.mark.skipif(not SAMPLE_HWP.is_file(), reason="shared samples not available")


def _with_stream(source: Path, tmp_path: Path, stream: str, replace: Callable[[bytes], bytes]) -> bytes:
    """A copy of `source` whose `stream` is replaced (olefile rewrites a stream in place, same size)."""
    copy = tmp_path / "copy.hwp"
    shutil.copyfile(source, copy)
    copy.chmod(0o600)
    with olefile.OleFileIO(str(copy), write_mode=True) as ole:
        old = ole.openstream(stream).read()
        new = replace(old)
        assert len(new) == len(old)
        ole.write_stream(stream, new)
    return copy.read_bytes()


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def _padded(data: bytes, size: int) -> bytes:
    assert len(data) <= size
    return data + b"\0" * (size - len(data))


def _record(tag: int, payload: bytes, size: int | None = None) -> bytes:
    return struct.pack("<I", tag | (size if size is not None else len(payload)) << 20) + payload


@needs_samples
def test_truncated_hwp_fails_clearly() -> None:
    data = SAMPLE_HWP.read_bytes()
    for cut in (len(data) // 2, 4096, 600):
        assert _fail(data[:cut], "a.hwp").startswith("the HWP file is damaged: ")


@needs_samples
def test_hwp_section_that_is_not_deflate_data_fails_clearly(tmp_path: Path) -> None:
    data = _with_stream(SAMPLE_HWP, tmp_path, "BodyText/Section0", lambda old: b"\xff" * len(old))
    assert _fail(data, "a.hwp").startswith("the HWP file is damaged: BodyText/Section0 is not valid compressed data")


@needs_samples
def test_hwp_section_cut_inside_its_deflate_stream_fails_clearly(tmp_path: Path) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    unfinished = packer.compress(_record(67, "한글".encode("utf-16-le"))) + packer.flush(zlib.Z_SYNC_FLUSH)

    def replace(old: bytes) -> bytes:
        # Fill the rest of the stream with empty non-final stored blocks: valid deflate data that
        # runs out before its last block, as a file cut short would.
        filler = b"\x00\x00\x00\xff\xff" * len(old)
        return (unfinished + filler)[:len(old)]

    data = _with_stream(SAMPLE_HWP, tmp_path, "BodyText/Section0", replace)
    assert _fail(data, "a.hwp") == "the HWP file is damaged: BodyText/Section0 is truncated"


@needs_samples
def test_hwp_record_longer_than_its_section_fails_clearly(tmp_path: Path) -> None:
    records = _record(67, "한글".encode("utf-16-le")) + _record(67, b"\0" * 10, size=500)
    data = _with_stream(SAMPLE_HWP, tmp_path, "BodyText/Section0", lambda old: _padded(_raw_deflate(records), len(old)))
    assert _fail(data, "a.hwp") == ("the HWP file is damaged: a record in BodyText/Section0 is truncated "
                                    "(500 bytes announced, 10 left)")


@needs_samples
def test_hwp_decompression_bomb_fails_clearly(tmp_path: Path) -> None:
    bomb = _raw_deflate(b"\0" * 1_000_000)  # 1 MB of records from ~1 KB (the sample's stream is 1.5 KB)
    data = _with_stream(SAMPLE_HWP, tmp_path, "BodyText/Section0", lambda old: _padded(bomb, len(old)))
    reason = _fail(data, "a.hwp", limits=Limits(max_unpacked_bytes=100_000))
    assert reason.startswith("the HWP file is too large when decompressed (over 100000 bytes)")


@needs_samples
def test_hwp_flags_are_obeyed(tmp_path: Path) -> None:
    def set_flag(flag: int) -> Callable[[bytes], bytes]:
        def patch(header: bytes) -> bytes:
            (flags,) = struct.unpack_from("<I", header, 36)
            return header[:36] + struct.pack("<I", flags | flag) + header[40:]
        return patch

    password = _with_stream(SAMPLE_HWP, tmp_path, "FileHeader", set_flag(0x2))
    assert "encrypted (password-protected)" in _fail(password, "a.hwp")
    # Marked as a distribution document, but without the ViewText streams: a reason, not BodyText's text.
    distribution = _with_stream(SAMPLE_HWP, tmp_path, "FileHeader", set_flag(0x4))
    assert _fail(distribution, "a.hwp") == (
        "the HWP file is distribution-protected (배포용) and its text could not be decoded: "
        "it has no ViewText sections")


@needs_samples
def test_distribution_hwp_with_a_damaged_key_fails_clearly_never_garbage(tmp_path: Path) -> None:
    def damage_key(stream: bytes) -> bytes:  # the 256 bytes after the record header hold the key
        return stream[:4] + bytes(b ^ 0x5A for b in stream[4:260]) + stream[260:]

    data = _with_stream(DISTRIBUTION_HWP, tmp_path, "ViewText/Section0", damage_key)
    assert _fail(data, "a.hwp").startswith(
        "the HWP file is distribution-protected (배포용) and its text could not be decoded: ")


def test_msvc_rand_matches_the_c_runtime() -> None:
    """srand(1) then rand() of Microsoft's C runtime gives 41, 18467, 6334, 26500, 19169."""
    random = MsvcRandom(1)
    assert [random.rand() for _ in range(5)] == [41, 18467, 6334, 26500, 19169]


def test_hwp_control_characters() -> None:
    """Extended/inline controls take 8 UTF-16 units (code, 6 units, code); char controls one."""
    def units(*codes: int) -> bytes:
        return struct.pack(f"<{len(codes)}H", *codes)

    table = units(11) + b"tbl " + b"\0" * 8 + units(11)      # extended control: a table
    tab = units(9) + b"\0" * 12 + units(9)                   # inline control: a tab
    payload = ("표:".encode("utf-16-le") + table + "가".encode("utf-16-le") + tab + "나".encode("utf-16-le")
               + units(10) + "다".encode("utf-16-le") + units(30) + "라".encode("utf-16-le") + units(13))
    assert paragraph_text(payload) == "표:가\t나\n다\u00a0라"


@needs_samples
def test_corrupt_ole_structure_fails_clearly() -> None:
    """A directory sector chain that loops back on itself, and a header pointing outside the file."""
    data = bytearray(SAMPLE_HWP.read_bytes())
    sector = 1 << struct.unpack_from("<H", data, 0x1E)[0]
    first_fat_sector = struct.unpack_from("<I", data, 0x4C)[0]
    directory = struct.unpack_from("<I", data, 0x30)[0]
    fat_entry = (first_fat_sector + 1) * sector + 4 * directory
    looped = bytearray(data)
    struct.pack_into("<I", looped, fat_entry, directory)
    assert _fail(bytes(looped), "a.hwp").startswith("the HWP file is damaged: ")
    outside = bytearray(data)
    struct.pack_into("<I", outside, 0x30, 0x00FFFFF0)
    assert _fail(bytes(outside), "a.hwp").startswith("the HWP file is damaged: ")


# -- other formats -----------------------------------------------------------------------------


@pytest.mark.parametrize("filename, content_type, reason", [
    ("문서.hwp", "application/x-hwp", "not a valid HWP file: the content is not an HWP 5.0 (OLE compound) file"),
    ("", "application/x-hwp", "not a valid HWP file: the content is not an HWP 5.0 (OLE compound) file"),
    ("문서.HWPX", "", "not a valid HWPX file: the content is not a ZIP package"),
    ("그림.png", "image/png", "unsupported file type: .png"),
    ("", "image/png", "unsupported file type: image/png"),
])
def test_declared_types_that_do_not_match_the_bytes(filename: str, content_type: str, reason: str) -> None:
    assert _fail(b"\x89PNG\r\n\x1a\n....", filename, content_type) == reason


def test_hwp_3_file_is_named_as_such() -> None:
    hwp3 = b"HWP Document File V3.00 \x1a\x01\x02\x03\x04\x05" + b"\0" * 100
    assert _fail(hwp3, "옛날.hwp").startswith("HWP 3.0 files (한글 97 and older) are not supported")


def test_ole_file_without_declared_type_is_unsupported() -> None:
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 1000
    assert _fail(ole, "").startswith("unsupported file type: OLE compound file")
