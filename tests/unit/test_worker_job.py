"""Job messages, delivery counting and error classification of the tagging worker."""
from __future__ import annotations

import json
import uuid

import grpc
import pytest

from services.tagging_worker.clients import ContentMismatch, is_transient
from services.tagging_worker.job import (
    DEFERRALS_HEADER,
    InvalidJob,
    Job,
    deferral_count,
    deferral_delay,
    delivery_count,
    is_last_delivery,
)

DOC, TENANT, SHA = str(uuid.uuid4()), str(uuid.uuid4()), "ab" * 32


def _body(**override: object) -> bytes:
    payload = {"event": "document.uploaded", "document_id": DOC, "tenant_id": TENANT, "sha256": SHA,
               "filename": "보고서.pdf", "content_type": "application/pdf", "size_bytes": 123,
               "uploaded_at": "2024-05-01T00:00:00Z", "capability": "signed.by.upload"}
    payload.update(override)
    return json.dumps({k: v for k, v in payload.items() if v is not None}, ensure_ascii=False).encode()


def test_valid_job() -> None:
    job = Job.from_body(_body(sha256=SHA.upper()))
    assert (job.document_id, job.tenant_id, job.sha256) == (DOC, TENANT, SHA)
    assert (job.filename, job.content_type, job.size_bytes) == ("보고서.pdf", "application/pdf", 123)
    assert job.capability == "signed.by.upload"
    assert job.title == "", "messages published before titles travelled with jobs still parse"
    assert Job.from_body(_body(title="2027년 예산안")).title == "2027년 예산안"


def test_passage_text_puts_the_title_first() -> None:
    from services.tagging_worker.worker import passage_text

    assert passage_text("예산안", "본문") == "예산안\n본문"
    assert passage_text("  ", "본문") == "본문"


@pytest.mark.parametrize("body, why", [
    (b"not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (_body(event="document.deleted"), "unexpected event"),
    (_body(document_id=None), "missing fields: document_id"),
    (_body(tenant_id="tenant-1"), "tenant_id is not a UUID"),
    (_body(sha256="abc"), "sha256 is not 64 hex digits"),
    (_body(size_bytes=-1), "size_bytes"),
    (_body(capability=None), "missing fields: capability"),
    (_body(capability=["x"]), "capability is not a string"),
])
def test_invalid_jobs(body: bytes, why: str) -> None:
    with pytest.raises(InvalidJob, match=why):
        Job.from_body(body)


def test_delivery_count_header() -> None:
    assert delivery_count(None) == 0
    assert delivery_count({}) == 0
    assert delivery_count({"x-delivery-count": 3}) == 3
    assert delivery_count({"x-delivery-count": "junk"}) == 0


def test_last_delivery() -> None:
    assert [is_last_delivery(n, 5) for n in range(6)] == [False, False, False, False, True, True]
    assert is_last_delivery(0, 1)


class _RpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="x")



@pytest.mark.parametrize("headers, expected", [
    (None, 0), ({}, 0), ({DEFERRALS_HEADER: 3}, 3), ({DEFERRALS_HEADER: "2"}, 2),
    ({DEFERRALS_HEADER: "many"}, 0), ({DEFERRALS_HEADER: -4}, 0), ({"x-delivery-count": 5}, 0),
])
def test_deferral_count_reads_the_workers_own_header(headers: dict | None, expected: int) -> None:
    assert deferral_count(headers) == expected


def test_deferral_delay_doubles_up_to_the_maximum() -> None:
    assert [deferral_delay(n, 15.0, 300.0) for n in range(7)] == [15, 30, 60, 120, 240, 300, 300]
    assert deferral_delay(10_000, 15.0, 300.0) == 300.0  # no overflow for absurd counts
    assert deferral_delay(-1, 15.0, 300.0) == 15.0
    assert deferral_delay(3, 0.0, 300.0) == 0.0

@pytest.mark.parametrize("code, transient", [
    (grpc.StatusCode.UNAVAILABLE, True),
    (grpc.StatusCode.DEADLINE_EXCEEDED, True),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, True),
    (grpc.StatusCode.INVALID_ARGUMENT, False),
    (grpc.StatusCode.NOT_FOUND, False),
    (grpc.StatusCode.FAILED_PRECONDITION, False),
    (grpc.StatusCode.INTERNAL, False),
])
def test_transient_codes(code: grpc.StatusCode, transient: bool) -> None:
    assert is_transient(_RpcError(code)) is transient


def test_checksum_mismatch_is_transient_other_errors_are_not() -> None:
    assert is_transient(ContentMismatch("x"))
    assert not is_transient(ValueError("x"))


def test_worker_has_no_database_dependency() -> None:
    """The tagging role has no database credentials: importing the worker must not load psycopg."""
    import subprocess
    import sys

    code = ("import sys, services.tagging_worker.app, services.tagging_worker.__main__; "
            "db = ('psycopg', 'psycopg_pool', 'sqlalchemy'); "
            "sys.exit(1 if any(m.split('.')[0] in db for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
