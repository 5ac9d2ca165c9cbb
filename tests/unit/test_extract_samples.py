"""Extraction of the real shared sample documents (used in place, never copied)."""
from __future__ import annotations

import difflib
import re
import unicodedata
import zipfile
from pathlib import Path

import olefile
import pytest

from services.tagging_worker.extractors import ExtractionError, Limits, extract_text
from services.tagging_worker.extractors.hwp import read_hwp
from services.tagging_worker.extractors.hwpx import read_hwpx
from tests.conftest import SAMPLES

pytestmark = pytest.mark.skipif(not SAMPLES.is_dir(), reason="shared samples not available")


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _extract(path: Path) -> str:
    return extract_text(_read(path), path.name)


def _compact(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _hangul(text: str) -> str:
    return "".join(ch for ch in text if "\uac00" <= ch <= "\ud7a3")


def _assert_matches_golden(text: str, expected_file: Path, min_ratio: float = 0.97, drawn_twice: str = "") -> None:
    """Korean content must match; whitespace and line layout may differ.

    The golden files are compared in NFC, like the extractor's output: NFC maps the KS X 1001
    duplicate Hanja (CJK compatibility ideographs such as U+F981) to their unified forms.

    `drawn_twice`: a run the PDF draws twice, slightly offset (a shadow effect), which the golden
    file repeats and PDFium reads once; one copy is taken out of the golden before comparing."""
    expected = unicodedata.normalize("NFC", expected_file.read_text(encoding="utf-8"))
    if drawn_twice:
        assert expected.count(drawn_twice) >= 2
        expected = expected.replace(drawn_twice, "", 1)
    got_h, want_h = _hangul(text), _hangul(expected)
    assert len(want_h) > 0
    # the same Hangul syllables (as a multiset) ...
    assert sorted(got_h) == sorted(want_h)
    # ... in (almost) the same order; PDFs may order a few layout boxes differently.
    matcher = difflib.SequenceMatcher(None, _compact(text), _compact(expected), autojunk=False)
    if len(want_h) < 20_000:
        assert matcher.ratio() >= min_ratio
    else:  # long documents: compare page-sized windows to keep the test fast
        step = 2000
        got_c, want_c = _compact(text), _compact(expected)
        for start in range(0, len(want_c), step * 5):
            window = want_c[start:start + step]
            assert window[:40] in got_c or difflib.SequenceMatcher(
                None, got_c[start:start + step], window, autojunk=False).ratio() > 0.9


def _golden(path: Path) -> Path:
    return path.with_name(path.name[: -len(path.suffix)] + ".expected.txt")


@pytest.mark.parametrize("name", ["cpython__cp949.txt", "langchain-kr__appendix-keywords-CP949.txt"])
def test_cp949_text_samples_decode_as_golden(name: str) -> None:
    path = SAMPLES / "txt" / name
    text = _extract(path)
    assert text == text.strip()
    _assert_matches_golden(text, _golden(path), min_ratio=0.999)


def test_euc_kr_sample_decodes_korean() -> None:
    text = _extract(SAMPLES / "txt" / "chardet__EUC-KR___ude_euc1.txt")
    assert text.startswith("역사적 예수 연구자들은 복음서나 사도들의 서신서 속의 교리적 예수가 아닌")
    assert "\ufffd" not in text
    assert len(_hangul(text)) > 100


RFP_PDF = "odl__제안요청서(수정)_230524 (1).pdf"
# (file, a run its page draws twice as a shadow: the golden file has it twice, PDFium once)
KOREAN_PDFS = [("odl__2125318_의사국 의안과_의안원문_hwp.pdf", ""), (RFP_PDF, "제안요청서(RFP)")]


@pytest.mark.parametrize("name, drawn_twice", KOREAN_PDFS)
def test_korean_pdf_samples_match_golden(name: str, drawn_twice: str) -> None:
    path = SAMPLES / "pdf" / name
    text = _extract(path)
    _assert_matches_golden(text, _golden(path), drawn_twice=drawn_twice)


def test_pdf_title_drawn_twice_as_a_shadow_is_read_once() -> None:
    """The RFP's cover title is drawn twice, offset by a point (pypdf and the golden file read it
    twice); PDFium drops the overlapping copy, so the title is not counted twice by the tagger."""
    text = _extract(SAMPLES / "pdf" / RFP_PDF)
    assert text.split("\n")[0] == "제안요청서(RFP)"
    assert "\ufffe" not in text and "\x02" not in text  # PDFium's hyphenation marks are removed


def test_pdf_sample_starts_with_the_bill_title() -> None:
    text = _extract(SAMPLES / "pdf" / "odl__2125318_의사국 의안과_의안원문_hwp.pdf")
    assert "기후위기 대응을 위한 탄소중립ㆍ녹색성장 기본법" in text
    assert "이수진의원 대표발의" in text


def test_empty_pdf_fails_clearly() -> None:
    with pytest.raises(ExtractionError) as err:
        _extract(SAMPLES / "pdf" / "odl__empty.pdf")
    assert err.value.reason == "the file is empty"


def test_password_protected_pdf_fails_as_encrypted() -> None:
    with pytest.raises(ExtractionError) as err:
        _extract(SAMPLES / "pdf" / "odl__password-protected.pdf")
    assert "encrypted" in err.value.reason


def test_korean_docx_sample_full_text() -> None:
    text = _extract(SAMPLES / "docx" / "langchain-kr__sample-word-document.docx")
    assert text.startswith("Semantic Search\n\n정의: 의미론적 검색은")
    # The same glossary ships as the CP949 text sample: the DOCX must carry all of its Korean.
    expected = (SAMPLES / "txt" / "langchain-kr__appendix-keywords-CP949.expected.txt").read_text(encoding="utf-8")
    ratio = difflib.SequenceMatcher(None, _hangul(text), _hangul(expected), autojunk=False).ratio()
    assert ratio > 0.95, ratio


def test_docx_with_odd_xml_does_not_break_extraction() -> None:
    """node-word-extractor's "bad-xml" file: a huge undeclared mc:Ignorable prefix, which broke
    that project's SAX parser. The XML is well-formed, so its text is extracted (as that
    project's own test expects), including a tracked insertion and without deleted text."""
    text = _extract(SAMPLES / "docx" / "node-word-extractor__bad-xml.docx")
    assert "A second test of reviewing, but with Unicode characters in" in text
    assert "This text has been inserted" in text


# -- HWP 5.0 and HWPX ---------------------------------------------------------------------------

HWP = SAMPLES / "hwp"
HWPX = SAMPLES / "hwpx"
# Placeholders the source projects' golden files put where a table or picture stands (<표>, <그림>,
# <사각형>, </표>): their convention, not document text.
_PLACEHOLDER = re.compile(r"</?[^<>\s]{1,10}>")


def _assert_golden_lines_in_order(text: str, expected_file: Path, cell_separator: str | None = None) -> None:
    """Every line of the golden file (placeholders removed, whitespace ignored) is in the text, in order.

    `cell_separator`: how the golden file joins a table row's cells (hwpxlib writes "; ");
    each cell is then looked for on its own."""
    expected = unicodedata.normalize("NFC", expected_file.read_text(encoding="utf-8"))
    pieces: list[str] = []
    for line in expected.splitlines():
        line = _PLACEHOLDER.sub("", line)
        pieces.extend(line.split(cell_separator) if cell_separator else [line])
    wanted = [_compact(piece) for piece in pieces if _compact(piece)]
    assert len(_hangul("".join(wanted))) > 0
    got, pos = _compact(text), 0
    for piece in wanted:
        found = got.find(piece, pos)
        assert found >= 0, f"{piece!r} missing (after position {pos})"
        pos = found + len(piece)


def _preview_words(path: Path) -> list[str]:
    """The words of the PrvText stream: the preview text that 한글 itself writes into an HWP file
    (its first ~1000 characters, table cells in <...>). The extractor never reads it, so it is an
    independent golden for files that have no expected text. The last word may be cut off."""
    with olefile.OleFileIO(str(path)) as ole:
        preview = ole.openstream("PrvText").read().decode("utf-16-le")
    words = re.split(r"[\s<>]+", unicodedata.normalize("NFC", preview))
    return [word for word in words[:-1] if word]


def test_hwp_sample_matches_golden_with_header_notes_and_metadata() -> None:
    path = HWP / "pyhwp__sample-5017.hwp"
    text = _extract(path)
    _assert_golden_lines_in_order(text, _golden(path))
    # The golden file (pyhwp's text output) leaves tables out; this extractor includes their cells.
    lines = text.split("\n")
    # Each cell paragraph is a line of its own ("표  2x2짜리표": a cell whose paragraph holds a nested table).
    for cell in ("A0", "B0", "A1", "B10", "B11", "table2", "표  2x2짜리표", "가나다"):
        assert cell in lines, cell
    document = read_hwp(_read(path), Limits())
    assert (document.title, document.sections, document.version, document.distribution) == (
        "제목입니다.", 1, "5.0.1.7", False)


@pytest.mark.parametrize("name", ["rhwp__biz_plan.hwp", "langchain-kr__디지털 정부혁신 추진계획.hwp",
                                  "hwplib__distribution.hwp"])
def test_hwp_samples_have_every_word_of_hancoms_preview(name: str) -> None:
    text = _extract(HWP / name)
    compact = _compact(text)
    words = _preview_words(HWP / name)
    assert len(_hangul("".join(words))) > 100
    missing = [word for word in words if word not in compact]
    assert missing == []


def test_hwp_table_text_is_extracted() -> None:
    """rhwp's business-plan template keeps most of its text in table cells."""
    lines = _extract(HWP / "rhwp__biz_plan.hwp").split("\n")
    for cell in ("구분", "분야별", "성명", "기술등급", "총괄PM", "이O수", "보안 서약", "사업수행계획서", "완료보고서"):
        assert cell in lines, cell
    assert any(line.endswith(" 사업자 회의록 양식") for line in lines)  # after a symbol-font bullet


def test_hwp_table_sample_with_empty_cells_gives_no_text() -> None:
    """pyhwp's table.hwp is a 2x2 table of empty cells (see its .expected.xhtml): no text, no error."""
    assert _extract(HWP / "pyhwp__table.hwp") == ""
    assert read_hwp(_read(HWP / "pyhwp__table.hwp"), Limits()).sections == 1


def test_long_government_hwp_is_read_whole() -> None:
    path = HWP / "langchain-kr__디지털 정부혁신 추진계획.hwp"
    text = _extract(path)
    assert text.startswith("디지털 정부혁신 추진계획\n2019. 10. 29.")
    assert len(_hangul(text)) > 10_000
    assert "\ufffd" not in text
    # its last pages: the appendix of expected changes per service
    assert text.endswith("□ 공공서비스 개방")


def test_distribution_protected_hwp_is_decrypted() -> None:
    """The 배포용 sample's body is only in its AES-encrypted ViewText stream; BodyText holds a
    notice that a newer viewer is needed. The real text must come out, not that notice."""
    path = HWP / "hwplib__distribution.hwp"
    text = _extract(path)
    assert text.startswith("강남세움복지관 공고 제 2024-08호\n2025년 강남세움센터 시설관리원 용역업체 선정 입찰공고")
    assert "배포용 문서" not in text and "상위 버전" not in text
    document = read_hwp(_read(path), Limits())
    assert document.distribution and document.sections == 1


def test_password_protected_hwp_fails_as_encrypted() -> None:
    with pytest.raises(ExtractionError) as err:
        _extract(HWP / "pyhwp__password-12345.hwp")
    assert "encrypted (password-protected)" in err.value.reason


def test_hwp_named_file_that_is_not_ole_is_refused_not_read_as_text() -> None:
    """pyhwp's nonole.hwp: 13 bytes of text named .hwp. Upload refuses it (415); should one get
    here (declared by name or content type), it fails with a reason instead of becoming text."""
    path = HWP / "pyhwp__nonole.hwp"
    for filename, content_type in ((path.name, ""), ("", "application/x-hwp")):
        with pytest.raises(ExtractionError) as err:
            extract_text(_read(path), filename, content_type)
        assert err.value.reason.startswith("not a valid HWP file")


def test_hwp_is_detected_from_its_bytes() -> None:
    text = extract_text(_read(HWP / "pyhwp__sample-5017.hwp"), "", "application/octet-stream")
    assert text.startswith("한글 2005 예제 파일입니다.")


def test_hwpx_multipara_matches_golden_exactly_but_for_whitespace() -> None:
    path = HWPX / "hwpxlib__textextractor__multipara.hwpx"
    text = _extract(path)
    assert _compact(text) == _compact(unicodedata.normalize("NFC", _golden(path).read_text(encoding="utf-8")))


def test_hwpx_table_matches_golden_cells() -> None:
    path = HWPX / "hwpxlib__textextractor__Table.hwpx"
    text = _extract(path)
    _assert_golden_lines_in_order(text, _golden(path), cell_separator=";")
    assert text.split("\n")[0] == "C반 기말고사"  # text of a rectangle shape


@pytest.mark.parametrize("name, sections, first_line", [
    ("hwpxlib__20240919__테스트문서.hwpx", 1, "개요"),
    ("rhwp__hwpx-02.hwpx", 2, "2024년 해외직접투자액은 총투자액 기준 639.5억 달러로"),
    ("hwpxlib__20240626__no_manifest.hwpx", 2, "입 법 예 고"),
])
def test_real_hwpx_documents_full_text(name: str, sections: int, first_line: str) -> None:
    """Checked against the preview text (Preview/PrvText.txt) that 한글 writes into the package."""
    path = HWPX / name
    text = _extract(path)
    assert text.startswith(first_line)
    assert read_hwpx(_read(path), Limits()).sections == sections
    with zipfile.ZipFile(path) as archive:
        preview = archive.read("Preview/PrvText.txt").decode("utf-8")
    words = [word for word in re.split(r"[\s<>]+", unicodedata.normalize("NFC", preview))[:-1] if word]
    assert [word for word in words if word not in _compact(text)] == []


def test_hwpx_without_manifest_reads_every_section() -> None:
    """no_manifest.hwpx lacks META-INF/manifest.xml; its second section must be read too."""
    text = _extract(HWPX / "hwpxlib__20240626__no_manifest.hwpx")
    with zipfile.ZipFile(HWPX / "hwpxlib__20240626__no_manifest.hwpx") as archive:
        assert "META-INF/manifest.xml" not in archive.namelist()
    lines = text.split("\n")
    assert "울산광역시 남구 구세 조례 일부개정조례안" in lines  # section 0
    assert lines.index("신ㆍ구조문대비표") > lines.index("울산광역시 남구청장")  # section 1, after section 0
