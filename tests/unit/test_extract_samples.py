"""Extraction of the real shared sample documents (used in place, never copied)."""
from __future__ import annotations

import difflib
import re
import unicodedata
from pathlib import Path

import pytest

from services.tagging_worker.extractors import ExtractionError, extract_text
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


def _assert_matches_golden(text: str, expected_file: Path, min_ratio: float = 0.97) -> None:
    """Korean content must match; whitespace and line layout may differ.

    The golden files are compared in NFC, like the extractor's output: NFC maps the KS X 1001
    duplicate Hanja (CJK compatibility ideographs such as U+F981) to their unified forms."""
    expected = unicodedata.normalize("NFC", expected_file.read_text(encoding="utf-8"))
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


KOREAN_PDFS = ["odl__2125318_의사국 의안과_의안원문_hwp.pdf", "odl__제안요청서(수정)_230524 (1).pdf"]


@pytest.mark.parametrize("name", KOREAN_PDFS)
def test_korean_pdf_samples_match_golden(name: str) -> None:
    path = SAMPLES / "pdf" / name
    text = _extract(path)
    _assert_matches_golden(text, _golden(path))


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


@pytest.mark.parametrize("path", sorted((SAMPLES / "hwp").glob("*.hwp")) + sorted((SAMPLES / "hwpx").glob("*.hwpx")),
                         ids=lambda p: p.name)
def test_hwp_and_hwpx_are_unsupported_for_now(path: Path) -> None:
    with pytest.raises(ExtractionError) as err:
        _extract(path)
    assert err.value.reason.startswith("unsupported file type: ")
