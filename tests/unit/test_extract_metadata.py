"""What `extract_document` reports besides the text: format, extractor, page or section count."""
from __future__ import annotations

from importlib.metadata import version

import pytest

from services.tagging_worker.extractors import Extracted, ExtractionError, Limits, extract_document
from tests.conftest import SAMPLES

needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason="shared samples not available")
PDFIUM = f"pdf/pypdfium2 {version('pypdfium2')}"
OLEFILE = f"hwp/olefile {version('olefile')}"
LXML = version("lxml")


@needs_samples
@pytest.mark.parametrize("path, fmt, extractor, pages, sections", [
    ("pdf/odl__제안요청서(수정)_230524 (1).pdf", "pdf", PDFIUM, 68, None),
    ("pdf/odl__2125318_의사국 의안과_의안원문_hwp.pdf", "pdf", PDFIUM, 10, None),
    ("docx/langchain-kr__sample-word-document.docx", "docx", f"docx/python-docx {version('python-docx')}",
     None, None),
    ("hwp/pyhwp__sample-5017.hwp", "hwp", OLEFILE, None, 1),
    ("hwp/hwplib__distribution.hwp", "hwp", OLEFILE, None, 1),
    ("hwpx/hwpxlib__20240919__테스트문서.hwpx", "hwpx", f"hwpx/lxml {LXML}", None, 1),
    ("hwpx/rhwp__hwpx-02.hwpx", "hwpx", f"hwpx/lxml {LXML}", None, 2),
    ("hwpx/hwpxlib__20240626__no_manifest.hwpx", "hwpx", f"hwpx/lxml {LXML}", None, 2),
    ("txt/cpython__cp949.txt", "txt", "text", None, None),
])
def test_samples_report_format_extractor_and_counts(path: str, fmt: str, extractor: str, pages: int | None,
                                                     sections: int | None) -> None:
    file = SAMPLES / path
    extracted = extract_document(file.read_bytes(), file.name)
    assert (extracted.format, extracted.extractor, extracted.pages, extracted.sections) == (
        fmt, extractor, pages, sections)
    assert extracted.text


@needs_samples
def test_pdf_page_count_includes_pages_beyond_the_page_limit() -> None:
    file = SAMPLES / "pdf" / "odl__제안요청서(수정)_230524 (1).pdf"
    extracted = extract_document(file.read_bytes(), file.name, limits=Limits(max_pages=2))
    assert extracted.pages == 68


def test_markup_formats_report_no_counts() -> None:
    assert extract_document("<p>공지</p>".encode(), "a.html") == Extracted(
        text="공지", format="html", extractor=f"html/lxml {LXML}", pages=None, sections=None)
    assert extract_document("<a><b>공지</b></a>".encode(), "a.xml") == Extracted(
        text="공지", format="xml", extractor=f"xml/lxml {LXML}", pages=None, sections=None)
    assert extract_document("# 회의록".encode(), "회의록.md") == Extracted(
        text="# 회의록", format="txt", extractor="text", pages=None, sections=None)


@needs_samples
def test_failure_after_the_format_is_known_carries_it() -> None:
    file = SAMPLES / "pdf" / "odl__password-protected.pdf"
    with pytest.raises(ExtractionError) as err:
        extract_document(file.read_bytes(), file.name)
    assert "encrypted" in err.value.reason
    assert (err.value.format, err.value.extractor) == ("pdf", PDFIUM)


def test_failure_before_the_format_is_known_carries_nothing() -> None:
    with pytest.raises(ExtractionError) as err:
        extract_document(b"", "a.pdf")
    assert (err.value.format, err.value.extractor) == (None, None)


def test_plain_dict_round_trip() -> None:
    extracted = Extracted(text="본문", format="hwp", extractor=OLEFILE, pages=None, sections=3)
    assert Extracted.from_dict(extracted.to_dict()) == extracted
