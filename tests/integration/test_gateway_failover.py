"""A replica stopped in the middle of load: two real search processes (`python -m services.search`,
HTTPS with mutual TLS and the role check) behind a real gateway (the upstream with passive and
active health checks). One replica is killed (SIGKILL: its connections reset mid-request) while
eight clients keep searching: every request either succeeds through the other replica or gets a
clean 502/503 problem+json, none hangs; the active checks eject the dead replica and readmit it
once it runs again (only after its probes succeed), and it then gets traffic again.

Heavy-ish (two search processes with the Korean analyser): run it under `flock /tmp/heavy.lock`
on a shared machine."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common import pki
from services.common.tls import ReloadingSSLContext, TlsFiles

from .test_gateway_support import free_port, start_gateway
from .test_search_process import ROOT, _insert_document

pytestmark = pytest.mark.integration

CLIENTS = 8
REQUEST_TIMEOUT_S = 15.0  # far above any answer; reaching it counts as a hang


class Replica:
    """One `python -m services.search` on fixed ports (so it can be started again on the same ones)."""

    def __init__(self, test_db_name: str, key_dir: Path, log_dir: Path, name: str) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        self.env = {**os.environ, "DOCTAG_DB_NAME": test_db_name, "DOCTAG_HTTP_PORT": str(self.http_port),
                    "DOCTAG_GRPC_PORT": str(self.grpc_port), "DOCTAG_HTTP_TLS": "true",
                    "DOCTAG_JWT_PUBLIC_KEY_FILE": str(key_dir / "jwt_public.pem"), "DOCTAG_LOG_LEVEL": "WARNING"}
        self.log = log_dir / f"search-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def start(self) -> Replica:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.search"], cwd=ROOT, env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def platform_client() -> httpx.Client:
    """The gateway's certificate, to read a replica's own /readyz and /metrics."""
    pki_dir = Path(os.environ["DOCTAG_TLS_DIR"])
    cert, key = pki.cert_paths(pki_dir, "gateway")
    context = ReloadingSSLContext(TlsFiles(pki_dir / "ca.crt", cert, key), server=False).context
    return httpx.Client(verify=context, timeout=5, trust_env=False)


def wait_for(condition: Any, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def ready(client: httpx.Client, replica: Replica) -> bool:
    assert replica.proc is not None
    assert replica.proc.poll() is None, f"search exited: {replica.log.read_text(errors='replace')[-2000:]}"
    try:
        return client.get(f"https://{replica.target}/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def searches_served(client: httpx.Client, replica: Replica) -> int:
    text = client.get(f"https://{replica.target}/metrics").text
    return sum(int(float(m)) for m in re.findall(
        r'^doctag_http_requests_total\{[^}]*route="/api/v1/search"[^}]*status="200"[^}]*\} (\S+)$', text, re.M))


async def load(url: str, headers: dict[str, str], stop: asyncio.Event) -> list[tuple[int | str, str, float]]:
    """CLIENTS loops of searches until `stop`: (status or exception name, content type, seconds)."""
    results: list[tuple[int | str, str, float]] = []

    async def one_client() -> None:
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, trust_env=False) as client:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    r = await client.get(url, params={"q": "옮기다"}, headers=headers)
                    results.append((r.status_code, r.headers.get("content-type", ""), time.perf_counter() - started))
                except httpx.HTTPError as exc:
                    results.append((exc.__class__.__name__, "", time.perf_counter() - started))

    await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
    return results


def test_stopping_a_replica_mid_load_loses_nothing_and_it_comes_back(
        tmp_path: Path, test_db_name: str, admin_dsn: str, key_dir: Path, make_token) -> None:  # type: ignore[no-untyped-def]
    tenant, doc_id = _insert_document(admin_dsn)
    a = Replica(test_db_name, key_dir, tmp_path, "a").start()
    b = Replica(test_db_name, key_dir, tmp_path, "b").start()
    gateway = None
    try:
        with platform_client() as probe:
            wait_for(lambda: ready(probe, a) and ready(probe, b), "the search replicas did not become ready")
            data = {
                "_format_version": "3.0",
                "upstreams": [{"name": "search-upstream", "targets": [{"target": a.target}, {"target": b.target}],
                               "healthchecks": {
                                   "passive": {"healthy": {"successes": 1},
                                               "unhealthy": {"tcp_failures": 1, "timeouts": 2, "http_failures": 3,
                                                             "http_statuses": [503]}},
                                   "active": {"type": "https", "http_path": "/readyz", "timeout": 1,
                                              "https_verify_certificate": True,
                                              "healthy": {"interval": 0.2, "successes": 2, "http_statuses": [200]},
                                              "unhealthy": {"interval": 0.2, "tcp_failures": 1, "timeouts": 2,
                                                            "http_failures": 2, "http_statuses": [503]}}}}],
                "services": [{"name": "search", "host": "search-upstream", "port": 443, "protocol": "https",
                              "retries": 2, "connect_timeout": 2000, "read_timeout": 10000,
                              "routes": [{"name": "search", "paths": ["/api/v1/search"], "methods": ["GET"],
                                          "strip_path": False}]}],
                "plugins": [{"name": "correlation-id", "config": {"header_name": "X-Request-ID", "generator": "uuid",
                                                                  "echo_downstream": True}},
                            {"name": "jwt", "config": {"claims_to_verify": ["exp"]}},
                            {"name": "acl", "config": {"allow": ["user"]}}],
                "consumers": [{"username": "doctag-platform", "jwt_secrets": [
                    {"key": "doctag", "algorithm": "RS256",
                     "rsa_public_key": "{file:${DOCTAG_JWT_PUBLIC_KEY_FILE}}"}]}],
            }
            gateway = start_gateway(tmp_path, data, db_name=test_db_name, key_dir=key_dir, upstream_tls=True,
                                    gateway_tenant_max_in_flight=0, gateway_api_quotas=False)
            target_b = next(t for t in gateway.apps.gateway.proxy.balancers["search-upstream"].targets
                            if t.port == b.http_port)
            headers = {"Authorization": f"Bearer {make_token(tenant)}"}
            url = f"{gateway.url}/api/v1/search"
            first = httpx.get(url, params={"q": "옮기다"}, headers=headers, timeout=30)
            assert first.status_code == 200 and [h["id"] for h in first.json()["hits"]] == [doc_id]

            async def scenario() -> list[tuple[int | str, str, float]]:
                stop = asyncio.Event()
                task = asyncio.create_task(load(url, headers, stop))
                await asyncio.sleep(2.0)
                b.kill()  # mid-load: its connections reset, in-flight requests included
                await asyncio.sleep(3.0)
                stop.set()
                return await task

            served_before = searches_served(probe, a)
            results = asyncio.run(scenario())
            print(f"failover: {len(results)} requests, statuses "
                  f"{sorted({str(r[0]): sum(1 for x in results if x[0] == r[0]) for r in results}.items())}, "
                  f"slowest {max(r[2] for r in results):.2f} s")
            assert len(results) > 50, "too little load to mean anything"
            hangs = [r for r in results if r[2] >= REQUEST_TIMEOUT_S - 0.5 or isinstance(r[0], str)]
            assert not hangs, hangs[:5]
            failed = [r for r in results if r[0] != 200]
            assert all(r[0] in (502, 503) and r[1] == "application/problem+json" for r in failed), failed[:5]
            # Searches are idempotent: those that hit the dead replica were retried on the other one.
            assert len(failed) <= len(results) // 20, f"{len(failed)} of {len(results)} failed"
            assert searches_served(probe, a) > served_before
            wait_for(lambda: target_b.state == "unhealthy", "the dead replica was not ejected", timeout=10)

            # Back on the same port: readmitted only after its probes succeed, then it serves again.
            b.start()
            wait_for(lambda: ready(probe, b), "the restarted replica did not become ready")
            wait_for(lambda: target_b.state == "healthy", "the restarted replica was not readmitted", timeout=15)
            with httpx.Client(timeout=REQUEST_TIMEOUT_S, trust_env=False) as c:
                statuses = [c.get(url, params={"q": "옮기다"}, headers=headers).status_code for _ in range(20)]
            assert statuses == [200] * 20
            assert searches_served(probe, b) > 0, "the readmitted replica got no traffic"
    finally:
        if gateway is not None:
            gateway.stop()
        a.stop()
        b.stop()
