"""The extractor's child process: time limit, crash recovery, errors passed through."""
from __future__ import annotations

import os
import time

import pytest

from services.tagging_worker.extractors import ExtractionError, Limits
from services.tagging_worker.extractors.isolated import TIMED_OUT, IsolatedExtractor
from tests.conftest import SAMPLES

BIG_PDF = SAMPLES / "pdf" / "odl__제안요청서(수정)_230524 (1).pdf"


def crash_on_purpose(data: bytes, filename: str, content_type: str, limits: Limits) -> str:
    """Stands in for a parser that takes the interpreter down (segfault, abort)."""
    if data == b"crash":
        os._exit(70)
    return data.decode()


async def test_text_and_errors_come_back_from_the_child() -> None:
    extractor = IsolatedExtractor(Limits(), timeout=30)
    try:
        assert await extractor.extract("한글 문서\r\n".encode("cp949"), "a.txt", "text/plain") == "한글 문서"
        with pytest.raises(ExtractionError) as err:
            await extractor.extract(b"", "a.pdf", "application/pdf")
        assert err.value.reason == "the file is empty"
        assert extractor.restarts == 0  # an extraction error does not cost the process
    finally:
        extractor.close()


@pytest.mark.skipif(not BIG_PDF.is_file(), reason="shared samples not available")
async def test_overrunning_extraction_times_out_and_the_next_file_works() -> None:
    extractor = IsolatedExtractor(Limits(), timeout=0.3)
    try:
        await extractor.extract(b"warm", "a.txt", "")  # the child is started and has imported the parsers
        start = time.monotonic()
        with pytest.raises(ExtractionError) as err:
            await extractor.extract(BIG_PDF.read_bytes(), BIG_PDF.name, "application/pdf")  # ~2 s of work
        assert err.value.reason == TIMED_OUT
        assert time.monotonic() - start < 5
        assert extractor.restarts == 1
        # The replacement child still has to start and import the parsers: give it room, so a
        # busy machine cannot turn "the next file works" into a second time-out.
        extractor.timeout = 30
        assert await extractor.extract("다음 파일".encode(), "b.txt", "") == "다음 파일"
    finally:
        extractor.close()


async def test_crashing_parser_is_reported_and_replaced() -> None:
    extractor = IsolatedExtractor(Limits(), timeout=30, extract=crash_on_purpose)
    try:
        with pytest.raises(ExtractionError) as err:
            await extractor.extract(b"crash", "a.txt", "")
        assert "crashed" in err.value.reason and "70" in err.value.reason
        assert await extractor.extract(b"fine", "a.txt", "") == "fine"
    finally:
        extractor.close()


def allocate_a_lot(data: bytes, filename: str, content_type: str, limits: Limits) -> str:
    """Stands in for a parser that blows up in memory on a hostile file."""
    if data == b"big":
        return str(len(bytearray(4 * 1024 * 1024 * 1024)))
    return data.decode()


async def test_memory_limit_turns_runaway_parsing_into_a_readable_failure() -> None:
    extractor = IsolatedExtractor(Limits(), timeout=30, memory_limit_mb=1024, extract=allocate_a_lot)
    try:
        with pytest.raises(ExtractionError) as err:
            await extractor.extract(b"big", "a.txt", "")
        assert "out of memory" in err.value.reason
        assert await extractor.extract(b"small", "a.txt", "") == "small"
    finally:
        extractor.close()


@pytest.mark.skipif(not BIG_PDF.is_file(), reason="shared samples not available")
async def test_default_memory_limit_leaves_room_for_real_documents() -> None:
    from services.tagging_worker.settings import WorkerSettings

    extractor = IsolatedExtractor(Limits(), timeout=60, memory_limit_mb=WorkerSettings().extract_memory_limit_mb)
    try:
        text = await extractor.extract(BIG_PDF.read_bytes(), BIG_PDF.name, "application/pdf")
        assert "온나라 웹기안기" in text
    finally:
        extractor.close()


async def test_child_ignores_sigterm_sent_to_the_process_group() -> None:
    """systemd/terminals signal every process of the group; only the worker decides about its child."""
    import signal

    extractor = IsolatedExtractor(Limits(), timeout=30)
    try:
        assert await extractor.extract(b"one", "a.txt", "") == "one"
        os.kill(extractor._process.pid, signal.SIGTERM)
        time.sleep(0.2)
        assert await extractor.extract(b"two", "a.txt", "") == "two"
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
        text = await extractor.extract(distribution.read_bytes(), distribution.name, "application/x-hwp")
        assert text.startswith("강남세움복지관 공고")
        with pytest.raises(ExtractionError) as err:
            password = SAMPLES / "hwp" / "pyhwp__password-12345.hwp"
            await extractor.extract(password.read_bytes(), password.name, "application/x-hwp")
        assert "encrypted (password-protected)" in err.value.reason
        with pytest.raises(ExtractionError) as err:
            await extractor.extract(bomb.getvalue(), "bomb.hwpx", "application/hwp+zip")
        assert "compression bomb" in err.value.reason
        hwpx = SAMPLES / "hwpx" / "hwpxlib__textextractor__multipara.hwpx"
        assert "김하성" in await extractor.extract(hwpx.read_bytes(), hwpx.name, "")
        assert extractor.restarts == 0
    finally:
        extractor.close()
