"""Runs extraction in a child process with a time limit.

Parsers for untrusted files can hang (pathological PDFs), exhaust memory or crash
the interpreter. The worker therefore hands each file to one long-lived child
process (started with "spawn": forking a process that runs gRPC threads is
unsafe) and waits at most `timeout` seconds. A child that overruns is killed and
a fresh one is started for the next file; one that dies is replaced the same way.

Results cross the pipe as plain values: ("ok", `Extracted.to_dict()`) or ("error", {"reason",
"format", "extractor"}).
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from . import Extracted, extract_document
from .errors import ExtractionError
from .limits import Limits

log = logging.getLogger(__name__)

TIMED_OUT = "text extraction timed out"

Extract = Callable[[bytes, str, str, Limits], Extracted]


def _child_main(conn: Connection, extract: Extract, memory_limit_mb: int) -> None:
    """The child's loop: one (data, filename, content_type, limits) in, one result out."""
    # The parent decides when the child ends (it kills it on timeout and at shutdown). A SIGTERM
    # or Ctrl-C sent to the whole process group must not kill a file mid-way and make a good
    # document look like one that crashed the parser.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from services.common.logging import configure_logging

    configure_logging("tagging-worker-extractor", "WARNING")
    if memory_limit_mb > 0:
        try:
            import resource

            limit = memory_limit_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):  # pragma: no cover - platform without rlimits
            pass
    while True:
        try:
            data, filename, content_type, limits = conn.recv()
        except (EOFError, OSError):
            return
        try:
            result: tuple[str, dict[str, Any]] = ("ok", extract(data, filename, content_type, limits).to_dict())
        except ExtractionError as exc:
            result = ("error", {"reason": exc.reason, "format": exc.format, "extractor": exc.extractor})
        except MemoryError:
            result = _error("the file is too large or complex to extract text from (out of memory)")
        except RecursionError:
            result = _error("the file is too deeply nested to extract text from")
        except Exception as exc:  # noqa: BLE001 - report, never die on one file
            result = _error(f"text extraction failed: {exc.__class__.__name__}: {exc}"[:400])
        del data
        try:
            conn.send(result)
        except (EOFError, OSError, BrokenPipeError):
            return


def _error(reason: str) -> tuple[str, dict[str, Any]]:
    return "error", {"reason": reason, "format": None, "extractor": None}


class IsolatedExtractor:
    """`await extractor.extract(data, filename, content_type)` → `Extracted`, or ExtractionError."""

    def __init__(self, limits: Limits, timeout: float, *, memory_limit_mb: int = 0,
                 extract: Extract = extract_document) -> None:
        self.limits = limits
        self.timeout = timeout
        self.memory_limit_mb = memory_limit_mb
        self._extract = extract
        self._ctx = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()
        self._thread_lock = threading.Lock()
        self.restarts = 0

    async def extract(self, data: bytes, filename: str, content_type: str) -> Extracted:
        async with self._lock:  # one file at a time per child process
            return await asyncio.to_thread(self._run, data, filename, content_type)

    def _run(self, data: bytes, filename: str, content_type: str) -> Extracted:
        with self._thread_lock:
            conn = self._ensure_child()
            try:
                conn.send((data, filename, content_type, self.limits))
                if not conn.poll(self.timeout):
                    log.warning("text extraction timed out; restarting the extractor process",
                                extra={"timeout_s": self.timeout, "file_name": filename})
                    self._kill_child()
                    raise ExtractionError(TIMED_OUT)
                status, value = conn.recv()
            except (EOFError, OSError, BrokenPipeError) as exc:
                exitcode = self._kill_child()
                log.error("the extractor process died", extra={"exitcode": exitcode, "file_name": filename})
                raise ExtractionError(
                    f"text extraction failed: the parser crashed on this file (exit code {exitcode})") from exc
        if status == "ok":
            return Extracted.from_dict(value)
        raise ExtractionError(str(value["reason"]), format=value["format"], extractor=value["extractor"])

    def _ensure_child(self) -> Connection:
        if self._process is not None and self._process.is_alive() and self._conn is not None:
            return self._conn
        self._kill_child()
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=_child_main, args=(child_conn, self._extract, self.memory_limit_mb),
                                    name="doctag-extractor", daemon=True)
        process.start()
        child_conn.close()
        self._process, self._conn = process, parent_conn
        return parent_conn

    def _kill_child(self) -> int | None:
        process, conn = self._process, self._conn
        self._process, self._conn = None, None
        if conn is not None:
            conn.close()
        if process is None:
            return None
        self.restarts += 1
        if process.is_alive():
            process.kill()
        process.join(5)
        exitcode: int | None = process.exitcode
        process.close()
        return exitcode

    def warm_up(self) -> None:
        """Starts the child process now (it imports the parsers), not on the first job."""
        with self._thread_lock:
            self._ensure_child()

    def close(self) -> None:
        with self._thread_lock:
            self._kill_child()
