"""`python -m services.search` as a real process: HTTP on uvicorn, gRPC, graceful SIGTERM,
and readiness only once the Korean analyser has loaded."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import httpx
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.pb import search_pb2, search_pb2_grpc
from tests.conftest import create_tenant
from tests.search_index import index_document
from tests.support import sync_channel

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, deadline_s: float = 60) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"search exited early with {proc.returncode}: {proc.stdout.read()}")  # type: ignore[union-attr]
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("search did not become ready")


def _insert_document(admin_dsn: str) -> tuple[str, str]:
    """One tagged document in a new tenant; returns (tenant id, document id)."""
    tenant = create_tenant(admin_dsn, f"search-p-{uuid.uuid4().hex[:6]}")
    title, text = "청사 이전 계획", "세종 청사로 부서를 옮기는 일정을 정했다."
    doc_id = str(uuid.uuid4())
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO documents.documents (id, tenant_id, title, filename, content_type, size_bytes, sha256,"
            " status, text_content) VALUES (%s, %s, %s, 'a.txt', 'text/plain', 1, %s, 'tagged', %s)",
            (doc_id, tenant, title, hashlib.sha256(b"x").hexdigest(), text))
        index_document(conn, tenant, doc_id, title, text)
    return tenant, doc_id


def _start(test_db_name: str, key_dir: Path) -> tuple[subprocess.Popen, int, int]:
    http_port, grpc_port = _free_port(), _free_port()
    env = {**os.environ, "DOCTAG_DB_NAME": test_db_name, "DOCTAG_HTTP_PORT": str(http_port),
           "DOCTAG_GRPC_PORT": str(grpc_port), "DOCTAG_JWT_PUBLIC_KEY_FILE": str(key_dir / "jwt_public.pem")}
    proc = subprocess.Popen([sys.executable, "-m", "services.search"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, http_port, grpc_port


def test_process_serves_http_and_grpc_and_stops_on_sigterm(test_db_name: str, admin_dsn: str, key_dir: Path,
                                                          make_token) -> None:  # type: ignore[no-untyped-def]
    tenant, doc_id = _insert_document(admin_dsn)
    proc, http_port, grpc_port = _start(test_db_name, key_dir)
    try:
        base = f"http://127.0.0.1:{http_port}"
        _wait_ready(f"{base}/readyz", proc)
        r = httpx.get(f"{base}/api/v1/search", params={"q": "옮기다"},
                      headers={"Authorization": f"Bearer {make_token(tenant)}", "X-Request-ID": "proc-test-1"})
        assert r.status_code == 200, r.text
        assert [h["id"] for h in r.json()["hits"]] == [doc_id]
        assert r.headers["x-request-id"] == "proc-test-1"

        # gRPC as the gateway calls it: mutual TLS, the end user's token in the metadata.
        with sync_channel(f"127.0.0.1:{grpc_port}", "gateway", "search") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="doctag.v1.Search"), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            resp = search_pb2_grpc.SearchStub(channel).Search(
                search_pb2.SearchRequest(query="청사"), timeout=10,
                metadata=(("authorization", f"Bearer {make_token(tenant)}"),))
            assert [h.id for h in resp.hits] == [doc_id] and resp.total == 1

        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        assert '"message": "shutting down"' in out and '"message": "Application shutdown complete."' in out
        assert '"service": "search"' in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _health(stub: health_pb2_grpc.HealthStub, service: str) -> str:
    """The health status name, or the gRPC error code name when the check fails."""
    try:
        status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
    except grpc.RpcError as exc:
        return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


def test_not_ready_until_the_korean_analyser_has_loaded(test_db_name: str, admin_dsn: str, key_dir: Path,
                                                        make_token) -> None:  # type: ignore[no-untyped-def]
    """Kiwi takes seconds to load: neither /readyz nor gRPC health may say ready before it has, so the
    first query after readiness is served by a loaded analyser."""
    tenant, doc_id = _insert_document(admin_dsn)
    proc, http_port, grpc_port = _start(test_db_name, key_dir)
    base = f"http://127.0.0.1:{http_port}"
    health_before_ready: list[str] = []
    try:
        with sync_channel(f"127.0.0.1:{grpc_port}", "gateway", "search") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            end = time.monotonic() + 90
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"search exited early with {proc.returncode}: {proc.stdout.read()}")  # type: ignore[union-attr]
                # Health first, then readiness: when /readyz still says not ready, the health read
                # before it was certainly taken before the warm-up finished.
                sample = [_health(health, ""), _health(health, "doctag.v1.Search")]
                try:
                    if httpx.get(f"{base}/readyz", timeout=10).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                health_before_ready += sample
                if time.monotonic() > end:
                    raise AssertionError("search did not answer /readyz with 200 within 90 s")
                time.sleep(0.05)  # poll interval
            # The gRPC health flips right after the warm-up, in the same step that made /readyz pass.
            end = time.monotonic() + 10
            while _health(health, "doctag.v1.Search") != "SERVING":
                assert time.monotonic() < end, "gRPC health did not become SERVING after /readyz did"
                time.sleep(0.05)  # poll interval
            assert _health(health, "") == "SERVING"

        first = httpx.get(f"{base}/api/v1/search", params={"q": "옮기다"},
                          headers={"Authorization": f"Bearer {make_token(tenant)}"}, timeout=30)
        assert first.status_code == 200, first.text
        assert [h["id"] for h in first.json()["hits"]] == [doc_id]
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # gRPC may not answer at all during the warm-up (UNAVAILABLE) or answer NOT_SERVING; never SERVING.
    assert "SERVING" not in health_before_ready, health_before_ready
    load = [line for line in metrics.splitlines() if line.startswith("doctag_search_analyser_load_seconds ")]
    assert load and float(load[0].split()[1]) > 0, load
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    loaded = [i for i, r in enumerate(records) if r["message"] == "Korean analyser loaded"]
    assert len(loaded) == 1, out  # loaded once, during the warm-up
    readyz = [(i, r["status"]) for i, r in enumerate(records) if r.get("path") == "/readyz"]
    # Whether the port is up before the load ends depends on timing (on an idle machine it often is
    # not), so this only checks nothing said ready too early; test_search.py's
    # test_not_ready_until_the_korean_analyser_has_loaded holds the warm-up and sees the 503 itself.
    assert all(status == 503 for i, status in readyz if i < loaded[0]), readyz
    assert min(i for i, status in readyz if status == 200) > loaded[0], readyz
    # A first query that had to load the analyser would take at least as long as the load did.
    search = next(r for r in records if r.get("path") == "/api/v1/search")
    assert search["duration_ms"] < records[loaded[0]]["duration_ms"], (search, records[loaded[0]])
