"""The extractor's child process: time limit, crash recovery, errors passed through."""
from __future__ import annotations

import os
import time
from importlib.metadata import version

import pytest

from services.tagging_worker.extractors import Extracted, ExtractionError, Limits
from services.tagging_worker.extractors.isolated import TIMED_OUT, IsolatedExtractor
from tests.conftest import SAMPLES

BIG_PDF = SAMPLES / "pdf" / "odl__제안요청서(수정)_230524 (1).pdf"


def _plain(data: bytes) -> Extracted:
    """What the stand-in parsers below return: the bytes as text."""
    return Extracted(text=data.decode(), format="txt", extractor="test", pages=None, sections=None)


def crash_on_purpose(data: bytes, filename: str, content_type: str, limits: Limits) -> Extracted:
    """Stands in for a parser that takes the interpreter down (segfault, abort)."""
    if data == b"crash":
        os._exit(70)
    return _plain(data)


async def test_text_and_errors_come_back_from_the_child() -> None:
    extractor = IsolatedExtractor(Limits(), timeout=30)
    try:
        assert (await extractor.extract("한글 문서\r\n".encode("cp949"), "a.txt", "text/plain")).text == "한글 문서"
        page = "<p>보도<script>x()</script>자료</p>".encode("euc-kr")
        assert await extractor.extract(page, "a.html", "text/html") == Extracted(
            text="보도자료", format="html", extractor=f"html/lxml {version('lxml')}", pages=None, sections=None)
        with pytest.raises(ExtractionError) as err:
            await extractor.extract(b"", "a.pdf", "application/pdf")
        assert (err.value.reason, err.value.format, err.value.extractor) == ("the file is empty", None, None)
        assert extractor.restarts == 0  # an extraction error does not cost the process
    finally:
        extractor.close()


def hang_on_purpose(data: bytes, filename: str, content_type: str, limits: Limits) -> Extracted:
    """Stands in for a parser stuck on a pathological file (the real PDFs now take 0.1 s, too
    little to overrun a time limit reliably)."""
    if data == b"hang":
        time.sleep(60)
    return _plain(data)


async def test_overrunning_extraction_times_out_and_the_next_file_works() -> None:
    extractor = IsolatedExtractor(Limits(), timeout=30, extract=hang_on_purpose)
    try:
        await extractor.extract(b"warm", "a.txt", "")  # the child is started and has imported the parsers
        extractor.timeout = 0.3
        start = time.monotonic()
        with pytest.raises(ExtractionError) as err:
            await extractor.extract(b"hang", "a.txt", "")
        assert err.value.reason == TIMED_OUT
        assert time.monotonic() - start < 5
        assert extractor.restarts == 1
        # The replacement child still has to start and import the parsers: give it room, so a
        # busy machine cannot turn "the next file works" into a second time-out.
        extractor.timeout = 30
        assert (await extractor.extract("다음 파일".encode(), "b.txt", "")).text == "다음 파일"
    finally:
        extractor.close()


async def test_crashing_parser_is_reported_and_replaced() -> None:
    extractor = IsolatedExtractor(Limits(), timeout=30, extract=crash_on_purpose)
    try:
        with pytest.raises(ExtractionError) as err:
            await extractor.extract(b"crash", "a.txt", "")
        assert "crashed" in err.value.reason and "70" in err.value.reason
        assert (await extractor.extract(b"fine", "a.txt", "")).text == "fine"
    finally:
        extractor.close()


def allocate_a_lot(data: bytes, filename: str, content_type: str, limits: Limits) -> Extracted:
    """Stands in for a parser that blows up in memory on a hostile file."""
    if data == b"big":
        return _plain(bytes(bytearray(4 * 1024 * 1024 * 1024)))
    return _plain(data)


async def test_memory_limit_turns_runaway_parsing_into_a_readable_failure() -> None:
    extractor = IsolatedExtractor(Limits(), timeout=30, memory_limit_mb=1024, extract=allocate_a_lot)
    try:
        with pytest.raises(ExtractionError) as err:
            await extractor.extract(b"big", "a.txt", "")
        assert "out of memory" in err.value.reason
        assert (await extractor.extract(b"small", "a.txt", "")).text == "small"
    finally:
        extractor.close()


@pytest.mark.skipif(not BIG_PDF.is_file(), reason="shared samples not available")
async def test_default_memory_limit_leaves_room_for_real_documents() -> None:
    from services.tagging_worker.settings import WorkerSettings

    extractor = IsolatedExtractor(Limits(), timeout=60, memory_limit_mb=WorkerSettings().extract_memory_limit_mb)
    try:
        extracted = await extractor.extract(BIG_PDF.read_bytes(), BIG_PDF.name, "application/pdf")
        assert "온나라 웹기안기" in extracted.text
        assert (extracted.format, extracted.extractor, extracted.pages, extracted.sections) == (
            "pdf", f"pdf/pypdfium2 {version('pypdfium2')}", 68, None)
    finally:
        extractor.close()


async def test_child_ignores_sigterm_sent_to_the_process_group() -> None:
    """systemd/terminals signal every process of the group; only the worker decides about its child."""
    import signal

    extractor = IsolatedExtractor(Limits(), timeout=30)
    try:
        assert (await extractor.extract(b"one", "a.txt", "")).text == "one"
        os.kill(extractor._process.pid, signal.SIGTERM)
        time.sleep(0.2)
        assert (await extractor.extract(b"two", "a.txt", "")).text == "two"
        assert extractor.restarts == 0
    finally:
        extractor.close()


@pytest.mark.skipif(not (SAMPLES / "hwp").is_dir(), reason="shared samples not available")
async def test_hwp_and_hwpx_through_the_child_with_the_default_limits() -> None:
    """The formats' dependencies load in the spawned child, and their failures come back as reasons
    within the worker's default memory limit, without costing the process."""
    import io
    import zipfile

    from services.tagging_worker.settings import WorkerSettings

    settings = WorkerSettings()
    extractor = IsolatedExtractor(Limits(max_chars=settings.extract_max_chars), timeout=60,
                                  memory_limit_mb=settings.extract_memory_limit_mb)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("mimetype", "application/hwp+zip")
        archive.writestr("Contents/section0.xml", b"<a>" + b" " * 100_000_000 + b"</a>")
    try:
        distribution = SAMPLES / "hwp" / "hwplib__distribution.hwp"
        extracted = await extractor.extract(distribution.read_bytes(), distribution.name, "application/x-hwp")
        assert extracted.text.startswith("강남세움복지관 공고")
        assert (extracted.format, extracted.sections, extracted.pages) == ("hwp", 1, None)
        with pytest.raises(ExtractionError) as err:
            password = SAMPLES / "hwp" / "pyhwp__password-12345.hwp"
            await extractor.extract(password.read_bytes(), password.name, "application/x-hwp")
        assert "encrypted (password-protected)" in err.value.reason
        assert (err.value.format, err.value.extractor) == ("hwp", f"hwp/olefile {version('olefile')}")
        with pytest.raises(ExtractionError) as err:
            await extractor.extract(bomb.getvalue(), "bomb.hwpx", "application/hwp+zip")
        assert "compression bomb" in err.value.reason
        hwpx = SAMPLES / "hwpx" / "hwpxlib__textextractor__multipara.hwpx"
        extracted = await extractor.extract(hwpx.read_bytes(), hwpx.name, "")
        assert "김하성" in extracted.text and (extracted.format, extracted.sections) == ("hwpx", 1)
        assert extractor.restarts == 0
    finally:
        extractor.close()


def _pdf(objects: list[bytes]) -> bytes:
    """A minimal PDF file with these objects (1 is the catalog) and a correct cross-reference table."""
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    return out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)


def _hostile_pdfs() -> dict[str, bytes]:
    """PDFium is C: files built to stress its parser (deep nesting, a cut file, a page tree loop)."""
    depth = 100_000
    content = b"q " * depth + b"BT /F1 12 Tf 72 720 Td (deep) Tj ET " + b"Q " * depth
    deep = _pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> /Nested " + b"[" * depth + b"]" * depth + b" >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ])
    loop = _pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [2 0 R] /Count 1 >>"])
    return {"deep": deep, "truncated": deep[: len(deep) // 2], "loop": loop}


async def test_hostile_pdfs_come_back_as_text_or_reasons_without_killing_the_child() -> None:
    from services.tagging_worker.settings import WorkerSettings

    extractor = IsolatedExtractor(Limits(), timeout=60, memory_limit_mb=WorkerSettings().extract_memory_limit_mb)
    try:
        hostile = _hostile_pdfs()
        assert (await extractor.extract(hostile["deep"], "deep.pdf", "application/pdf")).text == "deep"
        for name in ("truncated", "loop"):
            with pytest.raises(ExtractionError) as err:
                await extractor.extract(hostile[name], f"{name}.pdf", "application/pdf")
            assert err.value.reason.startswith("the PDF file is damaged: ")
        assert extractor.restarts == 0
        assert (await extractor.extract("다음 파일".encode(), "b.txt", "")).text == "다음 파일"
    finally:
        extractor.close()
